"""`nsnet audit`: header-only metadata per label/source and the metadata-shortcut classifier."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nsnet.config import ParamsError
from nsnet.data.audit import header_row, jpeg_quality, run_audit
from nsnet.data.index_stage import build_index
from nsnet.stages.cli import main
from tests.conftest import read_part, tiny_params, tiny_raw, write_params


def _image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
    noise = rng.integers(-8, 9, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, int) + noise, 0, 255).astype(np.uint8))


def make_tree(root: Path, real_fmt: str, fake_fmt: str, n: int = 30, seed: int = 0) -> Path:
    """``root/real/*`` and ``root/fake/gen/*``: same content statistics, chosen formats."""
    rng = np.random.default_rng(seed)
    for folder, fmt in ((root / "real", real_fmt), (root / "fake" / "gen", fake_fmt)):
        folder.mkdir(parents=True)
        for i in range(n):
            img = _image(rng)
            if fmt == "jpeg":
                img.save(folder / f"{i:03d}.jpg", quality=90)
            else:
                img.save(folder / f"{i:03d}.png")
    return root


def _audit(tmp_path: Path, root: Path, **protocol):
    params = tiny_params(root, protocol={"train_sources": [], "test_sources": [],
                                         "degradations": [], **protocol})
    cache = tmp_path / "cache"
    cache.mkdir()
    build_index(params, cache / "manifest.parquet", cache / "index_report.json")
    return run_audit(params, cache / "manifest.parquet", tmp_path / "audit.json")


def test_jpeg_quality_is_read_back_from_the_quantisation_tables():
    img = _image(np.random.default_rng(1))
    for q in (5, 10, 30, 50, 65, 75, 90, 95, 99, 100):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as opened:
            assert jpeg_quality(opened.quantization) == (q, True), q
        buf = io.BytesIO()
        img.convert("L").save(buf, format="JPEG", quality=q)  # luminance table only
        buf.seek(0)
        with Image.open(buf) as opened:
            assert jpeg_quality(opened.quantization)[0] == q


def test_header_row_reads_headers_only(tmp_path):
    """A file whose pixel data is cut off still gives its metadata: nothing was decoded."""
    img = _image(np.random.default_rng(2), 256)
    buf = io.BytesIO()
    icc = b"\0" * 128
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    img.save(buf, format="JPEG", quality=80, exif=exif.tobytes(), icc_profile=icc)
    data = buf.getvalue()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    row = header_row(str(cut))
    assert row["audit_error"] == ""
    assert (row["format"], row["width"], row["height"], row["mode"]) == ("JPEG", 256, 256, "RGB")
    assert (row["jpeg_quality"], row["ijg_tables"], row["exif"], row["icc"]) == (80, True, True,
                                                                               True)
    with pytest.raises(OSError):  # decoding the same file does fail
        Image.open(cut).load()
    png = tmp_path / "plain.png"
    img.save(png)
    row = header_row(str(png))
    assert (row["format"], row["jpeg_quality"], row["exif"], row["icc"]) == ("PNG", -1, False,
                                                                             False)


def test_format_shortcut_is_found_and_named(tmp_path):
    root = make_tree(tmp_path / "images", "jpeg", "png")
    res = _audit(tmp_path, root)
    clf = res["classifier"]
    assert clf["auc"] > 0.95 and clf["warning"]
    assert clf["top_feature"] in ("format", "jpeg_quality")
    assert clf["feature_auc"]["format"] == pytest.approx(1.0)
    assert res["per_label"]["real"]["formats"] == {"JPEG": 30}
    assert res["per_label"]["fake"]["formats"] == {"PNG": 30}
    assert res["per_label"]["real"]["jpeg_quality_median"] == 90
    assert res["per_label"]["real"]["jpeg_ijg_tables_share"] == 1.0  # PIL writes IJG tables
    assert res["per_source"]["gen"]["jpeg_quality_median"] is None
    assert "WARNING: your real and fake training images differ by their file metadata" in \
        res["text"]
    assert "real: JPEG 100%; fake: PNG 100%" in res["text"]
    saved = json.loads((tmp_path / "details" / "audit.json").read_text())
    assert saved["classifier"]["warning"] is True and "text" not in saved
    compared = json.loads((tmp_path / "audit.json").read_text())  # the DVC metrics file
    assert compared == {"metadata_auc": round(saved["classifier"]["auc"], 4)}


def test_no_shortcut_when_formats_agree(tmp_path):
    root = make_tree(tmp_path / "images", "png", "png")
    res = _audit(tmp_path, root)
    assert res["classifier"]["auc"] < 0.8 and not res["classifier"]["warning"]
    assert "no metadata shortcut above audit.warn_auc=0.8" in res["text"]
    assert "WARNING" not in res["text"]


def test_train_reencode_is_reported_as_removing_the_format_shortcut(tmp_path):
    root = make_tree(tmp_path / "images", "jpeg", "png")
    res = _audit(tmp_path, root, train_reencode="jpeg95")
    after = res["classifier"]["after_reencode"]
    assert after["reencode"] == "jpeg95" and "format" not in after["features"]
    assert after["auc"] < 0.8
    assert "with protocol.train_reencode=jpeg95 every training image becomes a JPEG" in \
        res["text"]


@pytest.mark.parametrize(("value", "msg"), [("resize64", "only jpeg<quality>"),
                                            ("jpeg101", "JPEG quality"), ("png", "unknown")])
def test_train_reencode_values_are_validated(value, msg):
    with pytest.raises(ParamsError, match=f"protocol.train_reencode.*{msg}"):
        tiny_params("data", protocol={"train_reencode": value})


def test_cli_audit_prints_table_and_strict_fails(tmp_path):
    root = make_tree(tmp_path / "images", "jpeg", "png", n=12)
    params_file = write_params(tmp_path / "params.yaml", tiny_raw(root))
    manifest = tmp_path / "manifest.parquet"
    runner = CliRunner()
    res = runner.invoke(main, ["index", "--params", str(params_file), "--out", str(manifest),
                               "--report", str(tmp_path / "report.json")])
    assert res.exit_code == 0, res.output
    args = ["audit", "--params", str(params_file), "--manifest", str(manifest),
            "--out", str(tmp_path / "audit.json"), "--set", "audit.folds=3"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "label real" in res.output and "source gen" in res.output
    assert "JPEG 100%" in res.output and "WARNING" in res.output
    res = runner.invoke(main, [*args, "--strict"])
    assert res.exit_code == 1
    assert "Error: audit: metadata shortcut found" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, [*args[:-1], "audit.warn_auc=3"])
    assert res.exit_code == 1 and "audit.warn_auc" in res.output and "Traceback" not in res.output


def test_audit_of_a_manifest_without_usable_images_is_one_clear_message(tmp_path):
    root = tmp_path / "images" / "real"
    root.mkdir(parents=True)
    (root / "broken.png").write_bytes(b"not an image")
    params_file = write_params(tmp_path / "params.yaml", tiny_raw(root.parent))
    runner = CliRunner()
    manifest = tmp_path / "manifest.parquet"
    assert runner.invoke(main, ["index", "--params", str(params_file), "--out", str(manifest),
                                "--report", str(tmp_path / "r.json"),
                                "--no-check-training"]).exit_code == 0
    res = runner.invoke(main, ["audit", "--params", str(params_file), "--manifest",
                               str(manifest), "--out", str(tmp_path / "a.json")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "has no usable images to audit" in res.output


def test_train_refuses_reencode_that_the_features_do_not_have(built_cache, tmp_path):
    from nsnet.heads.train_stage import run_train

    params = tiny_params(built_cache.params.data.roots[0].path,
                         protocol={"train_reencode": "jpeg95"})
    from nsnet.cache_store import StoreError

    with pytest.raises(StoreError, match="run `nsnet extract`.*read under jpeg95"):
        run_train(params, built_cache.manifest, built_cache.features, tmp_path / "m",
                  tmp_path / "log.csv")


def test_extract_reencodes_train_and_val_images_only(tmp_path):
    """protocol.train_reencode: train/val rows are patched from their JPEG re-encoding, test
    rows from their own pixels; the features record it, training accepts them, and going back
    to "" recomputes the features."""
    from nsnet.data import degradations
    from nsnet.data.images import open_image
    from nsnet.data.manifest import read_manifest
    from nsnet.extraction.cached_features import load_features
    from nsnet.extraction.extract_stage import run_extract
    from nsnet.extraction.patch_selection import PatchSpec, select_cells
    from nsnet.heads.train_stage import run_train

    root = make_tree(tmp_path / "images", "jpeg", "png", n=12)
    params = tiny_params(root, protocol={"train_sources": [], "test_sources": [],
                                         "degradations": [], "train_reencode": "jpeg70"},
                         train={"epochs": 1})
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest, store = cache / "manifest.parquet", cache / "features"
    build_index(params, manifest, cache / "index_report.json")
    run_extract(params, manifest, store)
    assert load_features(params, manifest, store).provenance["protocol"]["train_reencode"] == \
        "jpeg70"
    rows = read_manifest(manifest, only_ok=True)
    assert set(rows["split"]) == {"train", "val", "test"}
    spec = PatchSpec.of(params.patches)
    train = (rows["split"] != "test").to_numpy()

    def entropies(p, treatment_of):
        out = np.zeros((len(rows), spec.count), np.float32)
        for treatment in {treatment_of(s) for s in rows["split"]}:
            pick = np.flatnonzero([treatment_of(s) == treatment for s in rows["split"]])
            got = read_part(store, p, "selection", rows["id"].iloc[pick].tolist(), treatment)
            out[pick] = got["entropy"]
        return out

    entropy = entropies(params, lambda s: "jpeg70" if s != "test" else "")
    for i, row in rows.iterrows():
        rgb, _ = open_image(row["path"])
        if row["split"] != "test":
            rgb = degradations.apply("jpeg70", rgb)
        np.testing.assert_allclose(entropy[i], select_cells(rgb, row["id"], spec)[1], atol=1e-6)
    run_train(params, manifest, store, tmp_path / "m", tmp_path / "log.csv")

    plain = tiny_params(root, train={"epochs": 1})
    summary = run_extract(plain, manifest, store)
    assert summary.computed == int(train.sum())  # the training images, as they are
    assert load_features(plain, manifest, store).provenance["protocol"]["train_reencode"] == ""
    again = entropies(plain, lambda s: "")
    train = (rows["split"] != "test").to_numpy()
    assert not np.allclose(again[train], entropy[train])
    np.testing.assert_allclose(again[~train], entropy[~train], atol=1e-6)


def test_audit_runs_with_the_shipped_defaults_on_more_than_256_images(tmp_path):
    """data.num_workers: auto (the shipped default) used to reach the audit as the string
    'auto' and crash once the tree held more than 256 images (the parallel path)."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for folder, n in ((root / "real", 150), (root / "fake" / "gen", 150)):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                folder / f"{i:03d}.png")
    params_file = write_params(tmp_path / "params.yaml", {"data": {"roots": [str(root)]}})
    manifest = tmp_path / "manifest.parquet"
    runner = CliRunner()
    res = runner.invoke(main, ["index", "--params", str(params_file), "--out", str(manifest),
                               "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["audit", "--params", str(params_file), "--manifest",
                               str(manifest), "--out", str(tmp_path / "audit.json")])
    assert res.exit_code == 0, res.output
    assert "audit: 300 images, headers only" in res.output
    # The library function resolves `auto` as well (the Python API, without the CLI).
    from nsnet.config import load_params

    params = load_params(params_file)
    assert params.data.num_workers == "auto"
    assert run_audit(params, manifest, tmp_path / "again.json")["n"] == 300


def test_audit_table_columns_never_run_together_on_mixed_data(tmp_path):
    """Mixed sizes, modes and formats make long cells (`191x191 5%, 256x256 4%`): every
    column is as wide as its widest cell, so each row splits into the same 8 cells."""
    import re

    rng = np.random.default_rng(3)
    root = tmp_path / "images"
    for folder, n in (("real", 24), ("fake/a_generator_with_a_long_name", 24)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            side = int(rng.choice([191, 200, 256, 300, 333]))
            img = _image(rng, 64).resize((side, side))
            img = img.convert(str(rng.choice(["RGB", "L", "RGBA", "P"])))
            ext = "jpg" if img.mode in ("RGB", "L") and i % 2 else "png"
            img.save(root / folder / f"{i:03d}.{ext}")
    text = _audit(tmp_path, root)["text"]
    lines = text.splitlines()
    table = lines[1:lines.index(next(x for x in lines if x.startswith("metadata")))]
    header = table[0]
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    assert len(starts) == 8 and len(table) == 5  # 2 labels, 2 sources (real, generator)
    assert max(len(c) for row in table for c in re.split(r"\s{2,}", row)) > 12  # long cells
    for row in table[1:]:
        cells = re.split(r"\s{2,}", row.strip())
        assert len(cells) == 8, row
        # left-aligned text columns start where their header starts
        for col in (2, 4, 5):
            assert row[starts[col]] != " " and row[starts[col] - 2:starts[col]] == "  ", row
