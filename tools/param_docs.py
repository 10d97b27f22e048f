"""What each key of params.yaml means: the source of docs/parameters.md beside the schema's
types, defaults, ranges and choices (``tools/gen_docs.py`` writes the page; tests/test_docs.py
checks that every key has a line and that the committed page is what the code generates)."""

from __future__ import annotations

PARAM_DOCS: dict[str, str] = {  # one line or a few per key
    "seed": "seed of the figures' subsampling and of the audit's folds and forest (training "
            "has its own `train.seed`)",
    "data.roots": "folders to scan; an entry is a path or `{path, role, layout}`: role `auto` "
                  "(the layout's split, else by content hash) \\| `train` (train/val only) \\| "
                  "`test` (all test); layout `\"\"` = `data.layout` (see "
                  "[benchmarks](benchmarks.md))",
    "data.layout": "how labels, sources and splits are read from the folders (see "
                   "[usage](usage.md#using-your-own-images))",
    "data.split": "train/val/test shares by content hash when the layout has no split (must "
                  "sum to 1)",
    "data.split.train": "share of images in the training split",
    "data.split.val": "share of images in the validation split (model selection, decision)",
    "data.split.test": "share of images in the test split",
    "data.max_image_pixels": "decompression-bomb guard: larger images (width x height) are "
                             "recorded as `too_large`",
    "data.strict": "any unreadable or skipped file is an error",
    "data.num_workers": "processes that hash and decode during `index` and read headers "
                        "during `audit`; `auto` = all cores",
    "data.skip_lists": "text files listing images to leave out (GenImage's "
                       "`corrupted_files/*.txt`, `improper_png_header/*.txt`); listed files get "
                       "status `skip_listed`",
    "protocol.preset": "a paper's protocol: its training sources, official test rows and real "
                       "pools (see [benchmarks](benchmarks.md)); with a preset leave "
                       "`train_sources`/`test_sources` empty",
    "protocol.train_sources": "sources (generators) trained and validated on; `[]` = all",
    "protocol.test_sources": "sources tested on; `[]` = all",
    "protocol.degradations": "degraded copies of the test set (`nsnet extract` computes them, "
                             "`nsnet evaluate-degraded` scores them): `jpeg<q>`, `resize<n>`, "
                             "`blur<sigma>`, e.g. GenImage's `[jpeg65, jpeg30, resize112, "
                             "resize64, blur3, blur5]` (see [robustness](robustness.md))",
    "protocol.train_reencode": "`\"\"` or `jpeg<q>`: `nsnet extract` re-encodes every train/val "
                               "image as JPEG quality q (removes a format shortcut; test images "
                               "as they are; see [robustness](robustness.md#shortcut-audit))",
    "patches.size": "patch side in pixels (images are never resized)",
    "patches.n_low": "lowest spectral-entropy patches kept (`n_low + n_high` must be a square)",
    "patches.n_high": "highest spectral-entropy patches kept",
    "patches.keep_composites": "also write the 224 px composites to `cache/composites.h5` "
                               "(150 KB per image, view 0, to look at; not a DVC output)",
    "patches.views": "K fixed patch orders per image, each embedded by CLIP (the reference's "
                     "shuffle, cached): view 0 seeded by the image id, view k by (id, k); see "
                     "[heads](heads.md#patch-order-views)",
    "clip.arch": "open_clip architecture, or `tiny` (random, built in, no download)",
    "clip.pretrained": "open_clip tag or a local checkpoint file (`\"\"` with `tiny`)",
    "clip.batch_size": "images per CLIP forward; `auto` = 512 / 256 / 64 on GPUs with >= 40 / "
                       "16 / less GiB, 32 on CPU",
    "caption.model": "BLIP captioner: Hugging Face id, local folder, or `tiny`",
    "caption.max_new_tokens": "caption length limit (reference code: 40)",
    "caption.batch_size": "images per BLIP generate call; `auto` = 256 / 192 / 96 / 32 on GPUs "
                          "with >= 80 / 40 / 16 / less GiB, 16 on CPU",
    "compute.device": "`auto` (a GPU if visible) \\| `cpu` \\| `cuda` \\| `cuda:N` for "
                      "extraction and inference",
    "compute.precision": "autocast dtype on GPU (`fp32` \\| `fp16` \\| `bf16`); CPU runs fp32",
    "compute.num_workers": "decoding worker processes of `extract`; `auto` = cores - 1 (at "
                           "most 32)",
    "compute.torch_threads": "torch threads of the main process; `auto` = on a CPU the cores "
                             "the workers leave free and other processes do not use (1-minute "
                             "load average), at least 1; up to 4 with a GPU",
    "compute.shard_size": "images per resumable shard of the extraction",
    "compute.scheduler": "dask scheduler address (`tcp://host:8786`); `\"\"` = in-process "
                         "(see [scaling](scaling.md))",
    "train.head": "the head `dvc repro` trains: the NS-Net family on patch composites and "
                  "captions, or a paper baseline on its own recipe (see [heads](heads.md), "
                  "[baselines](baselines.md))",
    "train.epochs": "training epochs; the one with the best validation AP is kept",
    "train.batch_size": "rows per step (the ragged last batch is dropped: SupCon needs pairs)",
    "train.lr": "Adam learning rate (authors' notebook)",
    "train.weight_decay": "Adam weight decay",
    "train.temperature": "SupCon temperature (authors' notebook)",
    "train.bce_weight": "λ in (1-λ)·SupCon + λ·BCE: the authors' SupCon + 0.2·BCE, rescaled",
    "train.align_weight": "`advanced`: weight of MSE(mapper(t), x), the authors' 0.3 on the "
                          "same scale; 0 = off",
    "train.mapper": "`advanced`: how the semantic direction removed from each image feature "
                    "is made and trained (see [shortcut](shortcut.md#the-mapper-variants-"
                    "trainmapper-advanced-head))",
    "train.hidden_dim": "hidden width of the head MLP and of the mapper MLP",
    "train.proj_dim": "size of the contrastive embedding",
    "train.dropout": "dropout in the head",
    "train.nsnet_k": "`nsnet`: caption directions removed (capped at min(n, d))",
    "train.normalize": "L2-normalise features for `nsnet`/`advanced` (the probe always uses "
                       "raw features)",
    "train.balance": "weight BCE by n_real / n_fake so unequal classes do not bias the head",
    "train.seed": "initialisation, shuffling and dropout",
    "train.seeds": "several seeds, e.g. `[0, 1, 2]`: `train`, `evaluate`, `evaluate-degraded`, "
                   "`compare`, `matrix` and `robustness` run once per seed and report mean ± "
                   "std (sample std) over them; `models/detector` is the first seed's bundle, "
                   "the others in `models/detector/seeds/`; `[]` = `train.seed` alone (see "
                   "[results](results.md#seeds-mean--standard-deviation))",
    "train.device": "`auto` \\| `cpu` \\| `cuda[:i]` for training",
    "evaluate.threshold": "a number in [0, 1], or a rule applied on the validation split at "
                          "train time: `val_acc`, `val_eer`, `val_fpr:<x>`; fake iff prob > "
                          "threshold (see [decisions](decisions.md))",
    "evaluate.calibration": "fit on the validation logits at train time, stored in the bundle "
                            "(see [decisions](decisions.md))",
    "evaluate.view_average": "with `patches.views` > 1, how an image's K view logits become "
                             "one: the mean logit \\| the logit of the mean probability \\| "
                             "view 0 only",
    "evaluate.uncertain_band": "`predict`/`explain` call an image `uncertain` within this of "
                               "the threshold (stored in the bundle)",
    "audit.warn_auc": "`nsnet audit` warns when a classifier on file metadata alone exceeds "
                      "this cross-validated AUC",
    "audit.folds": "cross-validation folds of that classifier",
    "figures.tsne_points": "images subsampled for `nsnet tsne`",
    "figures.tsne_perplexity": "t-SNE perplexity (clipped to (n - 1) / 3 for small sets)",
    "methods": "each head's own settings, `methods.<head>.<key>`, validated by the head's "
               "module when the head runs (`pipeline/heads/methods/<head>.py`; "
               "`clip_zero_shot`: `real_prompts`, `fake_prompts`, `scale`; see "
               "[heads](heads.md))",
    "matrix.train_sources": "`nsnet matrix` trains on each of these sources in turn (with the "
                            "train side's reals) and tests on every source; `[]` = every source "
                            "with generated training images (see "
                            "[results](results.md#the-cross-generator-matrix))",
    "matrix.metric": "the number in the matrix heatmap's cells",
    "compare.heads": "heads `nsnet compare` trains side by side, each on its recipe, from one "
                     "extraction; `nsnet extract` computes the recipes of these and of "
                     "`train.head` only (see [baselines](baselines.md))",
    "recipes.crop_augmentations": "`univfd` (clip_crop): crops of UniversalFakeDetect's "
                                  "training augmentation per training image, beside crop 0 "
                                  "(the test-time center crop every image has; 1.5 KB per crop "
                                  "at ViT-L/14)",
    "recipes.layer_augmentations": "`rine` (clip_layers): crops of RINE's training "
                                   "augmentation per training image, beside crop 0",
    "recipes.layers": "`rine`: CLIP blocks whose class token is kept: `all` (RINE) or 0-based "
                      "indices, e.g. `[11, 17, 23]` (2 KB per block per crop at ViT-L/14)",
    "recipes.cozzolino_arch": "`cozzolino`: its open_clip backbone (CommonPool-XL ViT-L/14), "
                              "or `tiny`",
    "recipes.cozzolino_pretrained": "`cozzolino`: open_clip tag or a local checkpoint file "
                                    "(`\"\"` with `tiny`)",
}
