"""Degradations (GenImage's robustness protocol) and the degraded test copies in the store."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from conftest import read_part, tiny_params
from PIL import Image

from nsnet.backbones.clip import load_clip
from nsnet.cache_store import StoreError
from nsnet.config import ParamsError
from nsnet.data import degradations as degrade
from nsnet.data.images import open_image, read_bytes
from nsnet.data.manifest import file_paths, read_manifest
from nsnet.evaluation.degraded_eval_stage import format_degraded_table, run_evaluate_degraded
from nsnet.extraction import image_pass
from nsnet.extraction.extract_stage import run_extract
from nsnet.extraction.patch_selection import PatchSpec, select_patches
from nsnet.heads.train_stage import run_train


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


def _test_rows(manifest):
    rows = read_manifest(manifest, only_ok=True)
    return rows[rows["split"] == "test"].reset_index(drop=True)


@pytest.fixture(scope="module")
def degraded_workspace(built_cache, tmp_path_factory):
    """A copy of the built cache with a trained tiny head and two degraded test copies."""
    work = built_cache.copy_to(tmp_path_factory.mktemp("degraded") / "ws")
    params = tiny_params(built_cache.params.data.roots[0].path,
                         protocol={"degradations": ["jpeg30", "resize64"]})
    run_train(params, work.manifest, work.features, work.workdir / "models" / "detector",
              work.workdir / "plots" / "train_log.csv")
    image_pass.DECODES["count"] = 0
    first = run_extract(params, work.manifest, work.features)
    return work, params, first, image_pass.DECODES["count"]


def test_degraded_copies_hold_the_degraded_test_split(degraded_workspace):
    work, params, first, decodes = degraded_workspace
    rows = _test_rows(work.manifest)
    assert len(rows) > 0
    assert first.treatments == {"": first.images, "jpeg30": len(rows), "resize64": len(rows)}
    assert first.computed == 2 * len(rows) and decodes == len(rows)  # one decode: both copies
    spec = PatchSpec.of(params.patches)
    ids = rows["id"].tolist()
    clean = read_part(work.features, params, "selection", ids)["cells"][0]
    clip = load_clip(params.clip.arch, params.clip.pretrained, "cpu")
    path = os.fsdecode(file_paths(rows.head(1))[0])
    for name in ("jpeg30", "resize64"):
        image = read_part(work.features, params, "image:0", ids, name)["emb"]
        assert image.shape[0] == len(rows)
        captions = read_part(work.features, params, "caption", ids, name)["caption"]
        assert len(captions) == len(rows)
        cells = read_part(work.features, params, "selection", ids, name)["cells"]
        # the cached selection is that of the degraded decoded image, and the image feature
        # is CLIP's of the composite rebuilt from it
        rgb, _ = open_image(read_bytes(path), 10**9)
        expected = select_patches(degrade.apply(name, rgb), ids[0], spec)
        np.testing.assert_array_equal(cells[0], expected.cells)
        want = clip.encode_images(expected.composite[None]).numpy()[0]
        np.testing.assert_allclose(image[0], want, atol=2e-3, rtol=2e-3)
        if name == "jpeg30":
            assert not np.array_equal(cells[0], clean)
    cells = read_part(work.features, params, "selection", ids, "resize64")["cells"]
    assert len({tuple(c) for c in cells[0]}) <= 4  # a 64 px image: 2 x 2 patches, repeated


def test_degraded_copies_are_reused_and_only_new_ones_computed(degraded_workspace):
    work, params, _, _ = degraded_workspace
    n = len(_test_rows(work.manifest))
    more = tiny_params(params.data.roots[0].path,
                       protocol={"degradations": ["jpeg30", "resize64", "blur3"]})
    image_pass.DECODES["count"] = 0
    summary = run_extract(more, work.manifest, work.features)
    assert summary.computed == n and image_pass.DECODES["count"] == n  # blur3 only, one each
    changed = tiny_params(params.data.roots[0].path, protocol={"degradations": ["jpeg30"]},
                          caption={"max_new_tokens": 5})
    summary = run_extract(changed, work.manifest, work.features)
    assert summary.missing.keys() == {"caption", "text"}  # the images are reused


def test_evaluate_degraded_reports_metrics_per_degradation(degraded_workspace, tmp_path):
    work, params, _, _ = degraded_workspace
    model = work.workdir / "models" / "detector"
    results = run_evaluate_degraded(params, work.manifest, work.features, model, tmp_path)
    assert list(results) == ["clean", "jpeg30", "resize64"]
    summary = json.loads((tmp_path / "details" / "degradations.json").read_text())
    assert set(summary["degradations"]) == {"clean", "jpeg30", "resize64"}
    compact = json.loads((tmp_path / "degradations.json").read_text())
    degraded = [summary["degradations"][v]["mean"]["ap"] for v in ("jpeg30", "resize64")]
    assert compact == {"degraded_ap": pytest.approx(sum(degraded) / 2, abs=1e-4)}
    assert set(summary["degradations"]["jpeg30"]["per_source"]) == set(
        results["clean"]["per_source"])
    for res in results.values():
        for m in res["per_source"].values():
            assert 0 <= m["acc"] <= 1 and m["n_real"] > 0 and m["n_fake"] > 0
    missing = tiny_params(params.data.roots[0].path, protocol={"degradations": ["blur5"]})
    with pytest.raises(StoreError, match="read under blur5.*|nsnet extract"):
        run_evaluate_degraded(missing, work.manifest, work.features, model, tmp_path)
    table = format_degraded_table(results)
    assert table.splitlines()[0].split() == ["degradation", "acc", "real", "fake", "AP"]
    assert [line.split()[0] for line in table.splitlines()[1:]] == list(results)


def test_evaluate_degraded_prints_one_summary_and_never_the_clean_table_again(
        degraded_workspace, tmp_path):
    """`nsnet evaluate` prints the clean table; evaluate-degraded prints one row per
    degradation, and with --per-source the degraded copies' tables only."""
    from click.testing import CliRunner

    from nsnet.stages.cli import main
    from tests.conftest import write_params

    work, params, _, _ = degraded_workspace
    params_file = write_params(tmp_path / "p.yaml", json.loads(json.dumps(params.to_dict())))
    args = ["evaluate-degraded", "--params", str(params_file), "--manifest", str(work.manifest),
            "--features", str(work.features), "--model",
            str(work.workdir / "models" / "detector"), "--metrics", str(tmp_path / "m")]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("mean over generators per degradation (%)")
    assert [line.split()[0] for line in lines[1:]] == ["degradation", "clean", "jpeg30",
                                                        "resize64"]
    out = CliRunner().invoke(main, [*args, "--per-source"])
    assert out.exit_code == 0, out.output
    assert "[jpeg30] test" in out.stdout and "[resize64] test" in out.stdout
    assert "[clean]" not in out.stdout and out.stdout.count("mean over generators") == 1
