"""Degradations (GenImage's robustness protocol) and the cached degraded test views."""

from __future__ import annotations

import io
import json
import os

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tiny_params
from PIL import Image
from pipeline.evaluation.views_eval_stage import format_views_table, run_evaluate_views
from pipeline.extraction.views_stage import run_views, view_paths, view_rows

from pipeline.backbones.clip import load_clip
from pipeline.config import ParamsError
from pipeline.data import degradations as degrade
from pipeline.data.images import open_image, read_bytes
from pipeline.extraction import image_pass
from pipeline.extraction.patch_selection import PatchSpec, select_patches
from pipeline.heads.train_stage import run_train


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A smooth gradient with a sharp square and some noise (96 x 128)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:128]
    img = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.float32)
    img[30:60, 40:80] = 250
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_jpeg_matches_pil_round_trip_and_lower_quality_loses_more(photo):
    out65, out30 = degrade.apply("jpeg65", photo), degrade.apply("jpeg30", photo)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=30)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(out30, expected)
    assert out65.shape == out30.shape == photo.shape and out30.dtype == np.uint8
    err = {q: np.abs(o.astype(int) - photo).mean() for q, o in ((65, out65), (30, out30))}
    assert 0 < err[65] < err[30]
    assert np.array_equal(degrade.apply("jpeg30", photo), out30)  # deterministic


def test_resize_gives_square_side_with_antialiasing(photo):
    small = degrade.apply("resize64", photo)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    assert degrade.apply("resize112", photo).shape == (112, 112, 3)
    stripes = np.zeros((128, 128, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: aliasing would keep them black/white
    assert np.abs(degrade.apply("resize64", stripes).astype(int) - 127).max() < 40


def test_blur_is_a_gaussian_with_the_given_sigma(photo):
    line = np.zeros((61, 61, 3), np.uint8)
    line[:, 30] = 255  # a vertical line: its blurred profile across x is the 1-D kernel
    for sigma in (3, 5):
        out = degrade.apply(f"blur{sigma}", line).astype(np.float64)
        assert np.array_equal(out[..., 0], out[..., 2])
        profile = out[30, :, 0] / out[30, :, 0].sum()
        var = (profile * (np.arange(61) - 30) ** 2).sum()
        assert var == pytest.approx(sigma**2, rel=0.05)
    assert degrade.apply("blur5", photo).std() < degrade.apply("blur3", photo).std() < photo.std()


@pytest.mark.parametrize("name", ["jpeg", "jpeg0", "jpeg101", "jpeg65.5", "resize0", "blur0",
                                  "sharpen3", "JPEG65", ""])
def test_bad_names_are_rejected(name):
    if name == "":
        assert degrade.apply("", np.zeros((4, 4, 3), np.uint8)).shape == (4, 4, 3)
        return
    with pytest.raises(degrade.DegradationError):
        degrade.parse(name)


def test_params_validate_degradations(tmp_path):
    ok = tiny_params(tmp_path, protocol={"degradations": list(degrade.GENIMAGE_DEGRADATIONS)})
    assert ok.protocol.degradations == list(degrade.GENIMAGE_DEGRADATIONS)
    with pytest.raises(ParamsError, match=r"protocol.degradations\[1\].*unknown degradation"):
        tiny_params(tmp_path, protocol={"degradations": ["jpeg65", "jpg30"]})
    with pytest.raises(ParamsError, match="repeat"):
        tiny_params(tmp_path, protocol={"degradations": ["blur3", "blur3"]})
    with pytest.raises(ParamsError, match="smaller than one patches.size=128 patch"):
        tiny_params(tmp_path, protocol={"degradations": ["resize64"]}, patches={"size": 128})


@pytest.fixture(scope="module")
def views_workspace(built_cache, tmp_path_factory):
    """A copy of the built cache with a trained tiny head and two degraded views."""
    work = built_cache.copy_to(tmp_path_factory.mktemp("views") / "ws")
    params = tiny_params(built_cache.params.data.roots[0].path,
                         protocol={"degradations": ["jpeg30", "resize64"]})
    run_train(params, work.manifest, work.features, work.workdir / "models" / "detector",
              work.workdir / "plots" / "train_log.csv")
    views = work.workdir / "cache" / "views"
    first = run_views(params, work.manifest, views)
    return work, params, views, first


def test_views_hold_the_degraded_test_split(views_workspace):
    work, params, views, first = views_workspace
    assert [r["view"] for r in first] == ["jpeg30", "resize64"]
    assert not any(r["reused"] for r in first)
    rows = view_rows(work.manifest)
    assert len(rows) > 0 and set(rows["split"]) == {"test"}
    spec = PatchSpec.of(params.patches)
    with h5py.File(work.selections, "r") as f:
        clean_ids = [i.decode() for i in f["ids"][:]]
        clean = f["cells"][clean_ids.index(rows["id"][0])]
    clip = load_clip(params.clip.arch, params.clip.pretrained, "cpu")
    for name in ("jpeg30", "resize64"):
        paths = view_paths(views, name)
        with h5py.File(paths.embeddings, "r") as f:
            assert [i.decode() for i in f["ids"][:]] == rows["id"].tolist()
            assert f["image"].shape[0] == len(rows)
            image0 = f["image"][0]
        captions = pq.read_table(paths.outputs.captions).to_pandas()
        assert captions["id"].tolist() == rows["id"].tolist()
        with h5py.File(paths.outputs.selections, "r") as f:
            cells = f["cells"][0]
        # the cached selection is that of the degraded decoded image, and the image feature
        # is CLIP's of the composite rebuilt from it
        rgb, _ = open_image(read_bytes(os.fsdecode(rows["path_raw"][0])), 10**9)
        expected = select_patches(degrade.apply(name, rgb), rows["id"][0], spec)
        np.testing.assert_array_equal(cells, expected.cells)
        want = clip.encode_images(expected.composite[None]).numpy()[0]
        np.testing.assert_allclose(image0, want, atol=2e-3, rtol=2e-3)
        if name == "jpeg30":
            assert not np.array_equal(cells, clean)
    with h5py.File(view_paths(views, "resize64").outputs.selections, "r") as f:
        distinct = {tuple(c) for c in f["cells"][0]}
    assert len(distinct) <= 4  # a 64 px image has 2 x 2 patches, repeated to fill the grid


def test_views_are_reused_and_only_new_ones_computed(views_workspace):
    work, params, views, _ = views_workspace
    before = view_paths(views, "jpeg30").embeddings.stat().st_mtime_ns
    more = tiny_params(params.data.roots[0].path,
                       protocol={"degradations": ["jpeg30", "resize64", "blur3"]})
    image_pass.DECODES["count"] = 0
    res = {r["view"]: r["reused"] for r in run_views(more, work.manifest, views)}
    assert res == {"jpeg30": True, "resize64": True, "blur3": False}
    assert image_pass.DECODES["count"] == len(view_rows(work.manifest))  # one decode each
    assert view_paths(views, "jpeg30").embeddings.stat().st_mtime_ns == before
    changed = tiny_params(params.data.roots[0].path, protocol={"degradations": ["jpeg30"]},
                          caption={"max_new_tokens": 5})
    assert run_views(changed, work.manifest, views)[0]["reused"] is False


def test_evaluate_views_reports_metrics_per_degradation(views_workspace, tmp_path):
    work, params, views, _ = views_workspace
    results = run_evaluate_views(params, work.manifest, work.features,
                                 work.workdir / "models" / "detector", views, tmp_path)
    assert list(results) == ["clean", "jpeg30", "resize64"]
    summary = json.loads((tmp_path / "details" / "degradations.json").read_text())
    assert set(summary["views"]) == {"clean", "jpeg30", "resize64"}
    compact = json.loads((tmp_path / "degradations.json").read_text())
    assert compact == {f"{v}_ap": round(summary["views"][v]["mean"]["ap"], 4)
                       for v in ("clean", "jpeg30", "resize64")}
    per_view = json.loads((tmp_path / "views" / "jpeg30.json").read_text())
    assert per_view["view"] == "jpeg30"
    assert set(per_view["per_source"]) == set(results["clean"]["per_source"])
    for res in results.values():
        for m in res["per_source"].values():
            assert 0 <= m["acc"] <= 1 and m["n_real"] > 0 and m["n_fake"] > 0
    missing = tiny_params(params.data.roots[0].path, protocol={"degradations": ["blur5"]})
    with pytest.raises(FileNotFoundError, match="nsnet degrade"):
        run_evaluate_views(missing, work.manifest, work.features,
                           work.workdir / "models" / "detector", views, tmp_path)
    table = format_views_table(results)
    assert table.splitlines()[0].split() == ["view", "acc", "real", "fake", "AP"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == list(results)
