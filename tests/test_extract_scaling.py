"""The extract stage at scale: one decode per image, a few hundred bytes per image outside the
embeddings, work in DataLoader workers, only missing (image, part) pairs computed, Ctrl-C
safety, the run summary and the migration of the previous layout. Real images, real tiny
models, real files throughout."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from nsnet.backbones.blip import BlipResize, load_blip
from nsnet.cache_store import FeatureStore, write_table
from nsnet.data.images import open_image
from nsnet.data.index_stage import build_index
from nsnet.data.manifest import file_paths
from nsnet.extraction import image_pass, sharding
from nsnet.extraction.cached_features import load_features
from nsnet.extraction.extract_stage import compute_shard, ok_rows, plan_extract, run_extract
from nsnet.extraction.image_pass import ImagePass, ImageWork, batches
from nsnet.extraction.patch_selection import PatchSpec, select_batch
from nsnet.extraction.plan import Shard
from nsnet.extraction.recipes.composite import pass_plan
from nsnet.extraction.settings import ExtractRuntime, ExtractSettings
from nsnet.heads.bundle import load_bundle
from nsnet.heads.train_stage import run_train
from tests.conftest import part_of, read_part, tiny_params

SPEC = PatchSpec()
KINDS = ("selection", "caption", "image:0", "text")


def _works(built_cache, n: int) -> list[ImageWork]:
    rows = ok_rows(built_cache.manifest).head(n)
    return [ImageWork(i, p, ("",), (None,), (None,))
            for i, p in zip(rows["id"], file_paths(rows), strict=True)]


def _shard(built_cache, n: int, store: Path, kinds=KINDS + ("composite",), **runtime) -> Shard:
    params = copy.deepcopy(built_cache.params)
    params.patches.keep_composites = "composite" in kinds
    rt = {"device": "cpu", "num_workers": 0, "caption_batch": 5, "clip_batch": 3,
          "max_pixels": 10**8, **runtime}
    return Shard(0, tuple(kinds), tuple(_works(built_cache, n)),
                 ExtractSettings.from_params(params), ExtractRuntime(**rt), str(store))


def _read_all(store: Path, shard: Shard) -> dict[str, dict[str, np.ndarray]]:
    ids = [w.image_id for w in shard.images]
    parts = shard.settings.parts("").by_kind()
    out = {}
    for kind in shard.kinds:
        ps = FeatureStore(store).part(parts[kind])
        out[kind] = ps.gather(ids, list(ps.shapes()))
    return out


def test_shard_in_workers_equals_in_process_and_the_batched_reference(built_cache, tmp_path):
    main = _shard(built_cache, 12, tmp_path / "main", num_workers=0)
    workers = _shard(built_cache, 12, tmp_path / "workers", num_workers=2)
    assert compute_shard(main) == compute_shard(workers) == 12
    a, b = _read_all(tmp_path / "main", main), _read_all(tmp_path / "workers", workers)
    assert a.keys() == b.keys() == set(KINDS) | {"composite"}
    for kind in a:
        for k in a[kind]:
            np.testing.assert_array_equal(a[kind][k], b[kind][k], err_msg=f"{kind}/{k}")
    # The per-image worker pass reproduces the batched main-process selection ...
    rows = ok_rows(built_cache.manifest)
    images = [open_image(p)[0] for p in rows["path"][:12]]
    ids = [w.image_id for w in main.images]
    for k, sel in enumerate(select_batch(images, ids, SPEC)):
        np.testing.assert_array_equal(a["composite"]["composite"][k], sel.composite)
        np.testing.assert_array_equal(a["selection"]["cells"][k], sel.cells)
        np.testing.assert_array_equal(a["selection"]["entropy"][k], sel.entropy)
    # ... and the store built by the stage (other batch sizes) holds the same features.
    p = built_cache.params
    for kind in ("image:0", "text"):
        cached = read_part(built_cache.features, p, kind, ids)["emb"]
        np.testing.assert_allclose(a[kind]["emb"], cached, atol=2e-3)


def test_workers_send_back_fixed_size_arrays_not_decoded_images(tmp_path):
    """Memory per in-flight item is bounded by the composite and BLIP input, whatever the
    image size."""
    from transformers import BlipImageProcessor

    from nsnet.data.manifest import content_id

    rng = np.random.default_rng(0)
    works = []
    for k, (h, w) in enumerate([(1200, 1600), (40, 50), (300, 700)]):
        path = tmp_path / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)
        works.append(ImageWork(content_id(path.read_bytes()), os.fsencode(path), ("",),
                               (None,), (None,)))
    resize = BlipResize(BlipImageProcessor())  # BLIP-base's 384 px
    ds = ImagePass(works, pass_plan(SPEC, 10**8, blip=resize))
    (batch,) = list(batches(ds, 3, 2))
    assert tuple(batch["composite"].shape) == (3, 1, SPEC.side, SPEC.side, 3)
    assert batch["composite"].dtype == torch.uint8 and batch["blip"].dtype == torch.uint8
    assert tuple(batch["blip"].shape) == (3, 3, 384, 384)
    assert tuple(batch["cells"].shape) == (3, SPEC.count, 2)
    assert tuple(batch["entropy"].shape) == (3, SPEC.count)


def test_one_decode_serves_every_treatment_of_an_image(built_cache):
    """An image needed as is and under two degradations is read and decoded once."""
    work = _works(built_cache, 1)[0]._replace(treatments=("", "jpeg30", "blur3"),
                                               cells=(None,) * 3, captions=(None,) * 3)
    ds = ImagePass([work], pass_plan(SPEC, 10**8))
    image_pass.DECODES["count"] = 0
    (batch,) = list(batches(ds, 8, 0))
    assert image_pass.DECODES["count"] == 1 and len(batch["cells"]) == 3
    assert not torch.equal(batch["composite"][0], batch["composite"][1])  # jpeg30 differs


def test_workers_fetch_small_groups_joined_into_exact_model_batches(built_cache):
    ds = ImagePass(_works(built_cache, 14), pass_plan(SPEC, 10**8))
    got = list(batches(ds, 6, 2, fetch=4))  # groups of 4 images, cut into batches of 6
    assert [len(b["cells"]) for b in got] == [6, 6, 2]
    (whole,) = list(batches(ds, 14, 0))
    for key in ("cells", "entropy", "composite"):
        torch.testing.assert_close(torch.cat([b[key] for b in got]), whole[key], rtol=0, atol=0)


@pytest.mark.parametrize("size", [64, 384])
def test_blip_resize_in_workers_is_the_image_processor_bit_for_bit(size):
    """uint8 resize in the worker + rescale/normalise on the device == BlipImageProcessor."""
    from transformers import BlipImageProcessor

    processor = BlipImageProcessor(size={"height": size, "width": size})
    rng = np.random.default_rng(size)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in
              [(512, 512, 3), (97, 450, 3), (1024, 640, 3)]]
    resize = BlipResize(processor)
    got = resize.normalise(torch.from_numpy(np.stack([resize.resize(im) for im in images])),
                           torch.device("cpu"))
    want = processor(images=images, return_tensors="pt")["pixel_values"]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_captions_of_the_pass_are_the_captioners_captions(built_cache, tmp_path):
    shard = _shard(built_cache, 6, tmp_path / "c", kinds=("caption",), num_workers=2,
                   caption_batch=4)
    compute_shard(shard)
    got = _read_all(tmp_path / "c", shard)["caption"]["caption"]
    captioner = load_blip(built_cache.params.caption.model, "cpu")
    images = [open_image(p)[0] for p in ok_rows(built_cache.manifest)["path"][:6]]
    assert list(got) == captioner.caption(images, built_cache.params.caption.max_new_tokens)


def test_cache_outside_embeddings_and_captions_is_under_a_kilobyte_per_image(built_cache):
    n = len(ok_rows(built_cache.manifest))
    sel = part_of(built_cache.features, built_cache.params, "selection")
    per_row = sum(d.itemsize * int(np.prod(s)) for s, d in sel.shapes().values())
    assert per_row <= 1024, per_row
    assert sel.nbytes() <= n * 1024 + 64 * 1024 * len(sel.segment_names())
    leftovers = [p for p in (built_cache.workdir / "cache").rglob("*")
                 if p.is_file() and p.name not in ("manifest.parquet", "index_report.json")
                 and "features" not in p.parts]
    assert not leftovers, leftovers  # no composites, no temporary files
    kinds = {p.parent.parent.name for p in built_cache.features.glob("*/*/*.h5")}
    assert kinds == {"selection", "caption", "image", "text"}


def _decodes(fn) -> int:
    image_pass.DECODES["count"] = 0
    fn()
    return image_pass.DECODES["count"]


def _segments(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.glob("*/*/*.h5")}


def test_one_decode_per_image_and_only_missing_parts_computed(built_cache, tmp_path):
    ws = built_cache.copy_to(tmp_path / "ws")
    n = len(ok_rows(ws.manifest))
    params = copy.deepcopy(built_cache.params)
    before = _segments(ws.features)
    assert _decodes(lambda: run_extract(params, ws.manifest, ws.features)) == 0  # up to date
    assert _segments(ws.features) == before  # nothing written
    # A fresh store: every image decoded exactly once for selection, BLIP and CLIP.
    assert _decodes(lambda: run_extract(params, ws.manifest, tmp_path / "fresh")) == n
    # A new caption length: captions and text embeddings are computed (one decode each, for
    # BLIP), the selections and image embeddings are reused: their parts get no new segment.
    params.caption.max_new_tokens = 3
    image0 = read_part(ws.features, params, "image:0", ok_rows(ws.manifest)["id"].tolist())
    summary = run_extract(params, ws.manifest, ws.features)
    assert summary.missing == {"caption": n, "text": n}, summary.line()
    new = {p.split("/")[0] for p in _segments(ws.features) - before}
    assert new == {"caption", "text"}
    again = read_part(ws.features, params, "image:0", ok_rows(ws.manifest)["id"].tolist())
    np.testing.assert_array_equal(again["emb"], image0["emb"])
    # Back to the first caption length: nothing to compute, the old parts are still there.
    params.caption.max_new_tokens = built_cache.params.caption.max_new_tokens
    assert run_extract(params, ws.manifest, ws.features).computed == 0


def test_lost_embeddings_are_recomputed_from_stored_selections_and_captions(built_cache,
                                                                          tmp_path):
    """As after a new clip.* setting: the images are decoded once to rebuild composites from
    the stored cells, BLIP does not run, and the text embeddings come from stored captions."""
    ws = built_cache.copy_to(tmp_path / "ws")
    params = built_cache.params
    ids = ok_rows(ws.manifest)["id"].tolist()
    before = {k: read_part(ws.features, params, k, ids)["emb"] for k in ("image:0", "text")}
    for kind in ("image:0", "text"):
        FeatureStore(ws.features).remove(part_of(ws.features, params, kind).path)
    plan = plan_extract(params, ws.manifest, ws.features)
    assert set(plan.missing) == {"image:0", "text"}
    assert all(s.kinds == ("image:0", "text") for s in plan.shards)
    assert all(c is not None for s in plan.shards for w in s.images for c in w.cells)
    assert all(c is not None for s in plan.shards for w in s.images for c in w.captions)
    assert _decodes(lambda: run_extract(params, ws.manifest, ws.features)) == len(ids)
    for kind, want in before.items():
        np.testing.assert_allclose(read_part(ws.features, params, kind, ids)["emb"], want,
                                   atol=2e-3, err_msg=kind)


class _Interrupt:
    """Real shard computation that gets a Ctrl-C after its first batch of shard ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, shard: Shard, progress=None) -> int:
        def tick(n: int) -> None:
            if shard.index == self.at:
                raise KeyboardInterrupt
            if progress:
                progress(n)

        return compute_shard(shard, progress=tick)


def test_ctrl_c_keeps_committed_segments_and_resume_matches_uninterrupted(built_cache,
                                                                          tmp_path):
    params = copy.deepcopy(built_cache.params)
    params.compute.shard_size = 16
    params.compute.num_workers = 1
    store = tmp_path / "resumed" / "features"
    plan = plan_extract(params, built_cache.manifest, store)
    with pytest.raises(sharding.Interrupted, match="after 2 of .* shards.*resumes"):
        sharding.run(plan.shards, _Interrupt(at=2), resume_hint="a rerun resumes")
    kinds = len(KINDS)
    assert len(_segments(store)) == 2 * kinds  # shards 0 and 1 committed, nothing of shard 2
    assert not list(store.rglob("*.partial")) and not list(store.parent.glob(".tmp/*"))
    summary = run_extract(params, built_cache.manifest, store)
    done = sum(s.samples for s in plan.shards[:2])
    assert (summary.computed, summary.reused) == (summary.samples - done, done)
    ids = ok_rows(built_cache.manifest)["id"].tolist()
    for kind in ("selection", "caption"):  # deterministic parts: identical to the session's
        a = read_part(store, params, kind, ids)
        b = read_part(built_cache.features, params, kind, ids)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=kind)


def test_summary_reports_skipped_images_by_reason(demo_images, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(demo_images, root)
    real = sorted((root / "real").glob("*.png"))
    shutil.copy(real[0], root / "real" / "copy_of_first.png")
    (root / "real" / "broken.png").write_bytes(b"not an image at all")
    params = tiny_params(root)
    cache = tmp_path / "cache"
    build_index(params, cache / "manifest.parquet", cache / "index_report.json")
    summary = run_extract(params, cache / "manifest.parquet", cache / "features")
    assert summary.skipped == {"duplicate": 1}  # the broken file is in the index report only
    assert summary.images == len(ok_rows(cache / "manifest.parquet"))
    line = summary.line()
    assert "1 manifest row skipped (1 duplicate)" in line and "images/s" in line
    assert "computed" in line and "reused 0" in line
    again = run_extract(params, cache / "manifest.parquet", cache / "features").line()
    assert "all up to date" in again and f"reused {summary.samples}" in again


# ----------------------------------------------------------------------------- migration


def write_legacy(built_cache, folder: Path) -> None:
    """The previous layout's three files (one per part, whole image set), as nsnet 0.1 wrote
    them, from the session store's features."""
    p = built_cache.params
    rows = ok_rows(built_cache.manifest)
    ids = rows["id"].tolist()
    enc = np.asarray([i.encode() for i in ids], dtype="S64")
    images = {"degradation": "", "max_image_pixels": p.data.max_image_pixels}
    sel_req = {"part": "selections", **images, "patch_spec": PatchSpec.of(p.patches).as_dict(),
               "code": "0123"}
    cap_req = {"part": "captions", **images, "blip_model": p.caption.model,
               "max_new_tokens": p.caption.max_new_tokens, "precision": p.compute.precision}
    emb = {"clip_arch": p.clip.arch, "clip_pretrained": p.clip.pretrained,
           "precision": p.compute.precision}
    folder.mkdir(parents=True, exist_ok=True)
    sel = read_part(built_cache.features, p, "selection", ids)
    with h5py.File(folder / "selections.h5", "w") as f:
        f.create_dataset("ids", data=enc)
        f.create_dataset("cells", data=sel["cells"])
        f.create_dataset("entropy", data=sel["entropy"])
        f.attrs["layout"] = 2
        f.attrs["requests"] = json.dumps({"selections": sel_req})
    caps = read_part(built_cache.features, p, "caption", ids)["caption"]
    write_table(folder / "captions.parquet",
                pd.DataFrame({"id": ids, "caption": list(caps), "model": p.caption.model}),
                {"request": cap_req, "n_rows": len(ids)})
    with h5py.File(folder / "embeddings.h5", "w") as f:
        f.create_dataset("ids", data=enc)
        f.create_dataset("image", data=read_part(built_cache.features, p, "image:0", ids)["emb"])
        f.create_dataset("text", data=read_part(built_cache.features, p, "text", ids)["emb"])
        f.attrs["layout"] = 2
        f.attrs["requests"] = json.dumps({"image": {"part": "image", **emb, "views": 1},
                                          "text": {"part": "text", **emb}})


def test_a_cache_of_the_previous_layout_is_converted_without_recomputing(built_cache,
                                                                         tmp_path):
    work = tmp_path / "old"
    (work / "cache").mkdir(parents=True)
    shutil.copy(built_cache.manifest, work / "cache" / "manifest.parquet")
    write_legacy(built_cache, work / "cache")
    manifest, store = work / "cache" / "manifest.parquet", work / "cache" / "features"
    from nsnet.cache_store import StoreError

    with pytest.raises(StoreError, match="previous layout.*nsnet extract"):
        load_features(built_cache.params, manifest, store)
    decodes = _decodes(lambda: run_extract(built_cache.params, manifest, store))
    assert decodes == 0  # extract converted the old files instead of recomputing
    fs = load_features(built_cache.params, manifest, store)
    ref = load_features(built_cache.params, built_cache.manifest, built_cache.features)
    torch.testing.assert_close(fs.image, ref.image, rtol=0, atol=0)
    torch.testing.assert_close(fs.text, ref.text, rtol=0, atol=0)
    # A legacy part made with other settings is not converted: extract computes it.
    other = tmp_path / "other"
    (other / "cache").mkdir(parents=True)
    shutil.copy(built_cache.manifest, other / "cache" / "manifest.parquet")
    write_legacy(built_cache, other / "cache")
    params = copy.deepcopy(built_cache.params)
    params.caption.max_new_tokens = 5
    summary = run_extract(params, other / "cache" / "manifest.parquet",
                          other / "cache" / "features")
    assert summary.missing == {"caption": summary.images, "text": summary.images}


def test_a_converted_store_trains_a_bundle_that_names_its_backbones(built_cache, tmp_path):
    """Converted parts carry no CLIP model facts: the backbones a bundle records come from the
    settings the features were read with (clip.arch, caption.model, patches), so the bundle
    loads and names the chain that made its features."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(built_cache.manifest, cache / "manifest.parquet")
    write_legacy(built_cache, cache)
    manifest, store = cache / "manifest.parquet", cache / "features"
    run_extract(built_cache.params, manifest, store)
    params = copy.deepcopy(built_cache.params)
    params.train.epochs = 1
    run_train(params, manifest, store, tmp_path / "model", tmp_path / "log.csv")
    _, config = load_bundle(tmp_path / "model")
    p = built_cache.params
    assert config.backbones.clip.arch == p.clip.arch
    assert config.backbones.clip.pretrained == p.clip.pretrained
    assert config.backbones.caption.model == p.caption.model
    assert config.backbones.patches.spec() == PatchSpec.of(p.patches)
