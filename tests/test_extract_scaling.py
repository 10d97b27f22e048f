"""The extract stage at scale: one decode per image, a few hundred bytes per image outside the
embeddings, work in DataLoader workers, parts reused when their settings did not change,
Ctrl-C safety and the run summary. Real images, real tiny models, real files throughout."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.backbones.blip import load_blip
from pipeline.data.images import open_image
from pipeline.data.index_stage import build_index
from pipeline.extraction import image_pass, sharding
from pipeline.extraction.cached_features import load_features
from pipeline.extraction.extract_stage import (
    OldCacheLayout,
    Outputs,
    compute_shard,
    ok_rows,
    run_extract,
)
from pipeline.extraction.image_pass import BlipResize, ImagePass, PassPlan, batches
from pipeline.extraction.patch_selection import PatchSpec, select_batch
from tests.conftest import tiny_params

SPEC = PatchSpec()


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}


def _settings(built_cache, **kw) -> dict:
    p = built_cache.params
    return {"need": ["selections", "captions", "image", "text"], "device": "cpu",
            "precision": "fp32", "clip_arch": p.clip.arch, "clip_pretrained": p.clip.pretrained,
            "blip_model": p.caption.model, "max_new_tokens": p.caption.max_new_tokens,
            "patch_spec": SPEC.as_dict(), "max_pixels": 10**8, "degradation": "",
            "keep_composites": True, "num_workers": 0, "caption_batch": 5, "clip_batch": 3,
            **kw}


def _shard(built_cache, n: int, out: Path, **settings) -> sharding.Shard:
    rows = ok_rows(built_cache.manifest)
    inputs = [(p, None) for p in rows["path_raw"].tolist()[:n]]
    return sharding.Shard("extract", 0, rows["id"].tolist()[:n], inputs, 0, str(out),
                          _settings(built_cache, **settings))


def test_shard_in_workers_equals_in_process_and_the_batched_reference(built_cache, tmp_path):
    main = _shard(built_cache, 12, tmp_path / "main.h5", num_workers=0)
    workers = _shard(built_cache, 12, tmp_path / "workers.h5", num_workers=2)
    assert compute_shard(main) == compute_shard(workers) == 12
    a, b = _arrays(tmp_path / "main.h5"), _arrays(tmp_path / "workers.h5")
    assert a.keys() == b.keys() == {"ids", "cells", "entropy", "image", "text", "captions",
                                    "composites"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The per-image worker pass reproduces the batched main-process selection ...
    rows = ok_rows(built_cache.manifest)
    images = [open_image(p)[0] for p in rows["path"][:12]]
    for k, sel in enumerate(select_batch(images, main.ids, SPEC)):
        np.testing.assert_array_equal(a["composites"][k], sel.composite)
        np.testing.assert_array_equal(a["cells"][k], sel.cells)
        np.testing.assert_array_equal(a["entropy"][k], sel.entropy)
    # ... and the cache built by the stage (other batch sizes) holds the same features.
    cached = _arrays(built_cache.features)
    np.testing.assert_allclose(a["image"], cached["image"][:12], atol=2e-3)
    np.testing.assert_allclose(a["text"], cached["text"][:12], atol=2e-3)


def test_workers_send_back_fixed_size_arrays_not_decoded_images(tmp_path):
    """Memory per in-flight item is bounded by the composite and BLIP input, whatever the
    image size."""
    from pipeline.data.manifest import content_id

    rng = np.random.default_rng(0)
    paths, ids = [], []
    for k, (h, w) in enumerate([(1200, 1600), (40, 50), (300, 700)]):
        path = tmp_path / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)
        paths.append(os.fsencode(path))
        ids.append(content_id(path.read_bytes()))
    from transformers import BlipImageProcessor

    resize = BlipResize(BlipImageProcessor())  # BLIP-base's 384 px
    ds = ImagePass(ids, paths, PassPlan(SPEC, 10**8, blip=resize))
    (batch,) = list(batches(ds, 3, 2))
    assert tuple(batch["composite"].shape) == (3, SPEC.side, SPEC.side, 3)
    assert batch["composite"].dtype == torch.uint8 and batch["blip"].dtype == torch.uint8
    assert tuple(batch["blip"].shape) == (3, 3, 384, 384)
    assert tuple(batch["cells"].shape) == (3, SPEC.count, 2)
    assert tuple(batch["entropy"].shape) == (3, SPEC.count)


def test_workers_fetch_small_groups_joined_into_exact_model_batches(built_cache):
    rows = ok_rows(built_cache.manifest).head(14)
    ds = ImagePass(rows["id"].tolist(), rows["path_raw"].tolist(), PassPlan(SPEC, 10**8))
    got = list(batches(ds, 6, 2, fetch=4))  # groups of 3 images, joined in order
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
    shard = _shard(built_cache, 6, tmp_path / "c.h5", num_workers=2, caption_batch=4)
    compute_shard(shard)
    with h5py.File(shard.out) as f:
        got = [c.decode() for c in f["captions"][:]]
    captioner = load_blip(built_cache.params.caption.model, "cpu")
    images = [open_image(p)[0] for p in ok_rows(built_cache.manifest)["path"][:6]]
    assert got == captioner.caption(images, built_cache.params.caption.max_new_tokens)


def test_cache_outside_embeddings_and_captions_is_under_a_kilobyte_per_image(built_cache):
    n = len(ok_rows(built_cache.manifest))
    with h5py.File(built_cache.selections) as f:
        per_row = sum(f[k].dtype.itemsize * int(np.prod(f[k].shape[1:])) for k in f)
    assert per_row <= 1024, per_row
    assert built_cache.selections.stat().st_size <= n * 1024 + 64 * 1024
    leftovers = [p for p in (built_cache.workdir / "cache").rglob("*")
                 if p.is_file() and p.name not in ("manifest.parquet", "index_report.json",
                                                   "selections.h5", "captions.parquet",
                                                   "embeddings.h5")]
    assert not leftovers, leftovers  # no composites, no shard work files


def _decodes(fn) -> int:
    image_pass.DECODES["count"] = 0
    fn()
    return image_pass.DECODES["count"]


def test_one_decode_per_image_and_only_changed_parts_recomputed(built_cache, tmp_path):
    ws = built_cache.copy_to(tmp_path / "ws")
    cache, n = ws.workdir / "cache", len(ok_rows(ws.manifest))
    params = copy.deepcopy(built_cache.params)
    out = ws.outputs

    def mtimes() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in (out.selections, out.captions,
                                                        out.embeddings)}

    before, emb_before = mtimes(), _arrays(out.embeddings)
    assert _decodes(lambda: run_extract(params, ws.manifest, out, cache)) == 0  # up to date
    assert mtimes() == before
    # Fresh extraction: every image decoded exactly once for selection, BLIP and CLIP.
    fresh = Outputs.at(cache / "s2.h5", cache / "c2.parquet", cache / "e2.h5")
    assert _decodes(lambda: run_extract(params, ws.manifest, fresh, cache)) == n
    # A new caption length: captions and text embeddings are recomputed, the selections and
    # image embeddings are reused (the selections file is not even rewritten).
    params.caption.max_new_tokens = 3
    summary = run_extract(params, ws.manifest, out, cache)
    assert summary.reused_parts == ["image", "selections"], summary.line()
    after, emb_after = mtimes(), _arrays(out.embeddings)
    assert after["selections.h5"] == before["selections.h5"]
    assert after["captions.parquet"] != before["captions.parquet"]
    np.testing.assert_array_equal(emb_after["image"], emb_before["image"])
    assert not np.array_equal(emb_after["text"], emb_before["text"])
    # Lost embeddings (as after a new clip.* request): re-embedded from one decode each,
    # captions and selections reused (BLIP does not run).
    out.embeddings.unlink()
    summary = run_extract(params, ws.manifest, out, cache)
    assert summary.reused_parts == ["captions", "selections"], summary.line()
    assert mtimes()["captions.parquet"] == after["captions.parquet"]
    np.testing.assert_array_equal(_arrays(out.embeddings)["text"], emb_after["text"])


class _Interrupt:
    """Real shard computation that gets a Ctrl-C after its first batch of shard ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, shard: sharding.Shard, progress=None) -> int:
        def tick(n: int) -> None:
            if shard.index == self.at:
                raise KeyboardInterrupt
            if progress:
                progress(n)

        return compute_shard(shard, progress=tick)


def test_ctrl_c_leaves_no_partial_shard_and_resume_matches_uninterrupted(built_cache, tmp_path):
    rows = ok_rows(built_cache.manifest)
    ids = rows["id"].tolist()
    inputs = [(p, None) for p in rows["path_raw"].tolist()]
    settings = _settings(built_cache, need=["selections"], keep_composites=False,
                         num_workers=1)

    def plan(workdir: Path) -> list[sharding.Shard]:
        return sharding.plan("extract", ids, inputs, 16, workdir, settings, ".h5")

    shards = plan(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        sharding.run(shards, _Interrupt(at=2))
    left = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert left == [Path(s.out).name for s in shards[:2]]  # no partial file of shard 2

    summary = sharding.run(plan(tmp_path / "resumed"), compute_shard)
    assert (summary.reused_shards, summary.images) == (2, len(ids) - 32)
    assert "2 reused" in summary.line()
    straight = plan(tmp_path / "straight")
    assert sharding.run(straight, compute_shard).reused_shards == 0
    for a, b in zip(shards, straight, strict=True):
        x, y = _arrays(Path(a.out)), _arrays(Path(b.out))
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    cells = np.concatenate([_arrays(Path(s.out))["cells"] for s in shards])
    np.testing.assert_array_equal(cells, _arrays(built_cache.selections)["cells"])


def test_summary_reports_skipped_images_by_reason(demo_images, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(demo_images, root)
    real = sorted((root / "real").glob("*.png"))
    shutil.copy(real[0], root / "real" / "copy_of_first.png")
    (root / "real" / "broken.png").write_bytes(b"not an image at all")
    params = tiny_params(root)
    cache = tmp_path / "cache"
    build_index(params, cache / "manifest.parquet", cache / "index_report.json")
    out = Outputs.at(cache / "s.h5", cache / "c.parquet", cache / "e.h5")
    summary = run_extract(params, cache / "manifest.parquet", out, cache)
    assert sum(summary.skipped.values()) == 2 and summary.skipped.get("duplicate") == 1
    assert summary.images == len(ok_rows(cache / "manifest.parquet"))
    line = summary.line()
    assert "2 skipped" in line and "duplicate: 1" in line and "images/s" in line
    assert pq.ParquetFile(out.captions).metadata.num_rows == summary.images


def test_cache_of_the_old_layout_is_refused_with_instructions(built_cache, tmp_path):
    ws = built_cache.copy_to(tmp_path / "old")
    with h5py.File(ws.embeddings, "a") as f:
        del f.attrs["layout"]  # as written by nsnet < 0.2
    with pytest.raises(OldCacheLayout, match="older nsnet.*Rerun `nsnet extract`"):
        load_features(built_cache.params, ws.manifest, ws.embeddings)
    # extract itself migrates by recomputing what it cannot vouch for.
    summary = run_extract(built_cache.params, ws.manifest, ws.outputs, ws.workdir / "cache")
    assert summary.reused_parts == ["captions", "selections"], summary.line()
    load_features(built_cache.params, ws.manifest, ws.embeddings)
