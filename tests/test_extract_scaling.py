"""One-machine scaling of the extraction stages: work in DataLoader workers, streaming merges,
Ctrl-C safety and the run summary. Real images, real tiny models, real files throughout."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.backbones.blip import load_blip
from pipeline.cache_store import concat_h5, table_provenance
from pipeline.data.index_stage import build_index
from pipeline.extraction import sharding as sharding
from pipeline.extraction.extract_stages import (
    BlipPixels,
    PatchTransform,
    _batches,
    _Images,
    _ok_rows,
    compute_caption_shard,
    compute_patches_shard,
    run_patches,
)
from pipeline.extraction.patch_selection import PatchSpec, select_batch
from tests.conftest import tiny_params

SPEC = PatchSpec()


def _shard(built_cache, n: int, out: Path, **settings) -> sharding.Shard:
    rows = _ok_rows(built_cache.manifest)
    return sharding.Shard("x", 0, rows["id"].tolist()[:n], rows["path_raw"].tolist()[:n], 0,
                          str(out), settings)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}


def test_patch_selection_in_workers_equals_in_process_and_batched_reference(built_cache,
                                                                            tmp_path):
    settings = {"spec": SPEC.as_dict(), "max_pixels": 10**8, "batch_size": 5}
    main = _shard(built_cache, 12, tmp_path / "main.h5", **settings, num_workers=0)
    workers = _shard(built_cache, 12, tmp_path / "workers.h5", **settings, num_workers=2)
    assert compute_patches_shard(main) == compute_patches_shard(workers) == 12
    a, b = _arrays(tmp_path / "main.h5"), _arrays(tmp_path / "workers.h5")
    assert a.keys() == b.keys() == {"ids", "composites", "coords", "entropy"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # The per-image worker transform reproduces the batched main-process selection.
    images = list(_batches(_Images(main.ids, main.inputs, 10**8), 12, 0))[0]
    for k, sel in enumerate(select_batch(images, main.ids, SPEC)):
        np.testing.assert_array_equal(a["composites"][k], sel.composite)
        np.testing.assert_array_equal(a["coords"][k], sel.cells.astype(np.int32) * SPEC.size)
        np.testing.assert_array_equal(a["entropy"][k], sel.entropy)


def test_workers_send_back_fixed_size_composites_not_decoded_images(tmp_path):
    """Memory per in-flight item is bounded by the composite, whatever the image size."""
    from pipeline.data.manifest import content_id

    rng = np.random.default_rng(0)
    paths, ids = [], []
    for k, (h, w) in enumerate([(1200, 1600), (40, 50), (300, 700)]):
        path = tmp_path / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)
        paths.append(os.fsencode(path))
        ids.append(content_id(path.read_bytes()))
    ds = _Images(ids, paths, 10**8, PatchTransform(SPEC))
    (batch,) = list(_batches(ds, 3, 2))
    for comp, coords, ent in batch:
        assert comp.shape == (SPEC.side, SPEC.side, 3) and comp.dtype == np.uint8
        assert coords.shape == (SPEC.count, 2) and ent.shape == (SPEC.count,)


def test_caption_preprocessing_in_workers_gives_the_captioners_captions(built_cache, tmp_path):
    cap = built_cache.params.caption
    shard = _shard(built_cache, 6, tmp_path / "c.parquet", model=cap.model,
                   max_new_tokens=cap.max_new_tokens, batch_size=4, device="cpu",
                   precision="fp32", max_pixels=10**8, num_workers=2)
    compute_caption_shard(shard)
    got = pq.read_table(shard.out).to_pandas()
    captioner = load_blip(cap.model, "cpu")
    images = list(_batches(_Images(shard.ids, shard.inputs, 10**8), 6, 0))[0]
    assert got["id"].tolist() == shard.ids
    assert got["caption"].tolist() == captioner.caption(images, cap.max_new_tokens)
    pixels = BlipPixels(captioner.processor.image_processor)(images[0], shard.ids[0])
    assert tuple(pixels.shape) == (3, 64, 64)


def test_caption_merge_streams_one_row_group_per_shard(built_cache):
    n = len(_ok_rows(built_cache.manifest))
    meta = pq.ParquetFile(built_cache.captions).metadata
    assert meta.num_rows == n
    assert meta.num_row_groups == math.ceil(n / built_cache.params.compute.shard_size)
    assert table_provenance(built_cache.captions)["stage"] == "caption"
    df = pq.read_table(built_cache.captions).to_pandas()
    assert df["id"].tolist() == _ok_rows(built_cache.manifest)["id"].tolist()
    assert df["caption"].map(lambda s: isinstance(s, str) and len(s) > 0).all()


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

        return compute_patches_shard(shard, progress=tick)


def test_ctrl_c_leaves_no_partial_shard_and_resume_matches_uninterrupted(built_cache, tmp_path):
    rows = _ok_rows(built_cache.manifest)
    ids, inputs = rows["id"].tolist(), rows["path_raw"].tolist()
    settings = {"spec": SPEC.as_dict(), "max_pixels": 10**8, "batch_size": 4, "num_workers": 1}

    def plan(workdir: Path) -> list[sharding.Shard]:
        return sharding.plan("patches", ids, inputs, 16, workdir, settings, ".h5")

    shards = plan(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        sharding.run(shards, _Interrupt(at=2))
    left = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert left == [Path(s.out).name for s in shards[:2]]  # no partial file of shard 2

    summary = sharding.run(plan(tmp_path / "resumed"), compute_patches_shard)
    assert (summary.reused_shards, summary.images) == (2, len(ids) - 32)
    assert "2 reused" in summary.line()
    straight = plan(tmp_path / "straight")
    assert sharding.run(straight, compute_patches_shard).reused_shards == 0
    names = ["composites", "coords", "entropy"]
    concat_h5(tmp_path / "a.h5", [s.out for s in shards], names, {})
    concat_h5(tmp_path / "b.h5", [s.out for s in straight], names, {})
    a, b = _arrays(tmp_path / "a.h5"), _arrays(tmp_path / "b.h5")
    for k in ["ids", *names]:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["composites"], _arrays(built_cache.patches)["composites"])


def test_summary_reports_skipped_images_by_reason(demo_images, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(demo_images, root)
    real = sorted((root / "real").glob("*.png"))
    shutil.copy(real[0], root / "real" / "copy_of_first.png")
    (root / "real" / "broken.png").write_bytes(b"not an image at all")
    params = tiny_params(root)
    cache = tmp_path / "cache"
    build_index(params, cache / "manifest.parquet", cache / "index_report.json")
    summary = run_patches(params, cache / "manifest.parquet", cache / "patches.h5", cache)
    assert sum(summary.skipped.values()) == 2 and summary.skipped.get("duplicate") == 1
    assert summary.images == len(_ok_rows(cache / "manifest.parquet"))
    line = summary.line()
    assert "2 skipped" in line and "duplicate: 1" in line and "images/s" in line
