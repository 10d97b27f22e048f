"""The real architectures' code path, with random weights (no download): ViT-L-14 + BLIP-base.

The tiny backbones cover the pipeline everywhere else; this test runs what a user with real
weights runs. It writes a random ViT-L-14 as a local checkpoint file (``clip.pretrained:
<path>``) and a random BLIP of BLIP-base's size (``BlipConfig()``'s defaults: 12+12 layers,
768 wide, 384 px, 30524-word vocabulary) with ``save_pretrained`` to a folder given as the
model name, then loads both through the bundle with ``load_chain`` and scores two images with
``predict_paths`` (patches -> BLIP caption -> CLIP image and text embeddings -> 768-d head).
About a minute and under 5 GB of memory on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsnet.backbones.blip import load_blip
from nsnet.backbones.clip import load_clip
from nsnet.extraction.patch_selection import PatchSpec
from nsnet.heads.bundle import save_bundle
from nsnet.heads.bundle_config import (
    Backbones,
    BundleConfig,
    CaptionFacts,
    ClipFacts,
    HeadConfig,
    HeadSettings,
    PatchesConfig,
)
from nsnet.heads.method import build_head
from nsnet.heads.training_loop import HPARAM_KEYS
from nsnet.inference.predict import load_chain, predict_paths

pytestmark = pytest.mark.slow
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, which ViT-L-14 uses
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _vit_l14_checkpoint(path: Path) -> None:
    """A random ViT-L-14 state dict saved in float16 (half the file; loads into float32)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14", pretrained=None)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    del model
    gc.collect()


def _blip_base_folder(folder: Path) -> None:
    """A random BLIP-base-sized captioner + processor written with ``save_pretrained``."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    config = BlipConfig()  # BLIP-base's sizes
    n_vocab = config.text_config.vocab_size
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = specials + [f"w{i}" for i in range(n_vocab - len(specials))]
    config.text_config.bos_token_id = vocab.index("[DEC]")
    config.text_config.sep_token_id = config.text_config.eos_token_id = vocab.index("[SEP]")
    config.text_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(Path(tmp) / "vocab.txt"), bos_token="[DEC]")
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    del model
    gc.collect()


def test_vit_l14_and_blip_base_through_load_chain_and_predict(tmp_path):
    ckpt, blip_dir = tmp_path / "vit_l14_random.pt", tmp_path / "blip-base-random"
    _vit_l14_checkpoint(ckpt)
    _blip_base_folder(blip_dir)
    spec = PatchSpec()
    head_kwargs = {"hidden_dim": 512, "proj_dim": 128, "dropout": 0.1, "nsnet_k": 32,
                   "normalize": True, "mapper": "end_to_end"}
    assert set(head_kwargs) == set(HPARAM_KEYS)
    torch.manual_seed(0)
    head = build_head("advanced", 768, **head_kwargs)
    bundle = tmp_path / "bundle"
    save_bundle(bundle, head, BundleConfig(
        head=HeadConfig("advanced", 768, train=HeadSettings(**head_kwargs)),
        backbones=Backbones(clip=ClipFacts("ViT-L-14", str(ckpt)),
                            caption=CaptionFacts(str(blip_dir), 6),
                            patches=PatchesConfig(**dataclasses.asdict(spec)))))
    rng = np.random.default_rng(0)
    paths = []
    for i, side in enumerate((96, 160)):  # 3x3 and 5x5 patches: both repeat up to 7x7
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side + 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    try:
        chain = load_chain(bundle, device="cpu")
        clip, blip = chain.clip, chain.blip
        assert (clip.embed_dim, clip.image_size) == (768, 224)
        np.testing.assert_allclose(clip.mean, CLIP_MEAN)
        np.testing.assert_allclose(clip.std, CLIP_STD)
        assert clip.provenance["weights"] == f"file:{ckpt.name}"
        vision = blip.model.config.vision_config
        assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (768, 12, 384)
        assert blip.model.config.text_config.num_hidden_layers == 12
        assert blip.provenance["blip_revision"] == "local"
        df = predict_paths(chain, paths, batch_size=2)
        assert df["status"].tolist() == ["ok", "ok"]
        assert np.isfinite(df["prob"].to_numpy()).all()
        assert df["prob"].between(0, 1).all()
        assert all(isinstance(c, str) for c in df["caption"])
        text = clip.encode_texts(df["caption"].tolist())  # the text tower on BLIP's captions
        assert text.shape == (2, 768) and torch.isfinite(text).all()
    finally:
        load_clip.cache_clear()
        load_blip.cache_clear()
        gc.collect()

