"""The index stage on real folders of real image files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_params
from PIL import Image

from nsnet.cache_store import table_provenance
from nsnet.data.index_stage import build_index, read_skipped
from nsnet.data.manifest import MANIFEST_COLUMNS, read_manifest


def _png(path: Path, rng: np.random.Generator, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """real/ (with a same-label duplicate), fake/<gen>/, a label conflict and a broken file."""
    root = tmp_path_factory.mktemp("index") / "images"
    rng = np.random.default_rng(0)
    for i in range(6):
        _png(root / "real" / f"r{i}.png", rng)
    for gen in ("ganA", "diffB"):
        for i in range(4):
            _png(root / "fake" / gen / f"{gen}{i}.png", rng)
    shutil.copy(root / "real" / "r0.png", root / "real" / "r0_copy.png")  # duplicate, same label
    conflict = _png(root / "real" / "both.png", rng)
    shutil.copy(conflict, root / "fake" / "ganA" / "both.png")  # same bytes as real and fake
    (root / "fake" / "diffB" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _png(root / "real" / "tiny.png", rng, size=8)  # smaller than one 32 px patch
    (root / "real" / "notes.txt").write_text("not an image name: listed as unsupported_format")
    return root


def _index(root: Path, out_dir: Path, **data) -> tuple[pd.DataFrame, dict, Path, Path]:
    params = tiny_params(root, data=data) if data else tiny_params(root)
    out, report = out_dir / "manifest.parquet", out_dir / "index_report.json"
    res = build_index(params, out, report)
    return read_manifest(out), res, out, report


def test_columns_labels_sources_and_ids(small_root, tmp_path):
    df, res, _, report = _index(small_root, tmp_path)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert len(df) == 6 + 8 + 1 + 2  # images: a duplicate, a label conflict's two copies
    skipped = read_skipped(report)  # the broken, tiny and .txt files: in the report only
    assert skipped.loc[skipped["path"].str.endswith("notes.txt"), "status"].tolist() == [
        "unsupported_format"]  # listed, not decoded
    by_name = df.set_index(df["path"].map(lambda p: Path(p).name + ":" + Path(p).parent.name))
    assert by_name.loc["r1.png:real", "label"] == 0
    assert by_name.loc["r1.png:real", "source"] == "real"
    assert by_name.loc["ganA2.png:ganA", "label"] == 1
    assert by_name.loc["ganA2.png:ganA", "source"] == "ganA"
    assert by_name.loc["diffB0.png:diffB", "source"] == "diffB"
    ok = df[df["status"] == "ok"]
    assert set(ok["source"]) == {"real", "ganA", "diffB"}
    assert (ok[["width", "height"]] == 40).all().all()
    assert set(ok["format"]) == {"PNG"}
    for row in df.itertuples():  # id = content hash of the file's bytes
        if row.status in ("ok", "duplicate", "label_conflict"):
            data = Path(row.path).read_bytes()
            assert row.id == hashlib.blake2b(data, digest_size=16).hexdigest()
            assert row.bytes == len(data)
    ids = dict(zip(by_name.index, by_name["id"], strict=True))
    assert ids["r0.png:real"] == ids["r0_copy.png:real"]  # same bytes -> same id
    assert ids["r0.png:real"] != ids["r1.png:real"]


def test_unusable_files_are_reported_with_a_reason_not_in_the_manifest(small_root, tmp_path):
    df, res, _, report = _index(small_root, tmp_path)
    skipped = read_skipped(report)
    status = dict(zip(skipped["path"].map(lambda p: Path(p).name), skipped["status"],
                      strict=False))
    assert status["broken.png"] in ("corrupt", "not_an_image")
    assert status["tiny.png"] == "too_small"
    assert not df["path"].map(lambda p: Path(p).name in ("broken.png", "tiny.png")).any()
    assert res["summary"]["ok"] == (df["status"] == "ok").sum() == 6 + 8
    assert res["summary"]["skipped"]["too_small"] == 1


def test_duplicates_reported_and_label_conflicts_excluded(small_root, tmp_path):
    df, res, _, report = _index(small_root, tmp_path)
    assert res["duplicates"] == 1 and res["label_conflicts"] == 1
    rep = json.loads(report.read_text())
    (dup,) = rep["duplicates"]
    assert sorted(Path(p).name for p in dup["paths"]) == ["r0.png", "r0_copy.png"]
    assert dup["labels"] == [0, 0]
    names = df["path"].map(lambda p: Path(p).name)
    # The first copy stays usable, the second is marked as a duplicate of it.
    assert df.loc[names == "r0.png", "status"].item() == "ok"
    assert df.loc[names == "r0_copy.png", "status"].item() == "duplicate"
    (conflict,) = rep["label_conflicts"]
    assert sorted(conflict["labels"]) == [0, 1]
    both = df[names == "both.png"]
    assert len(both) == 2 and set(both["status"]) == {"label_conflict"}
    assert not read_manifest(tmp_path / "manifest.parquet", only_ok=True)["path"].map(
        lambda p: Path(p).name == "both.png").any()


def test_report_json_and_provenance(small_root, tmp_path):
    _, res, out, report = _index(small_root, tmp_path)
    rep = json.loads(report.read_text())
    assert set(rep) >= {"summary", "duplicates", "label_conflicts", "cross_split_duplicates",
                        "skipped", "provenance"}
    assert rep["summary"] == res["summary"]
    assert {s["status"] for s in rep["skipped"]} >= {"too_small", "duplicate", "label_conflict"}
    prov = table_provenance(out)
    assert prov["stage"] == "index"
    assert str(small_root) in json.dumps(prov["roots"])
    assert prov["split"] == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert prov["patch_size"] == 32
    assert prov["nsnet_version"] and prov["code_version"] and prov["torch"]
    assert rep["provenance"] == prov
    assert not list(tmp_path.glob("*.partial"))  # atomic writes leave no temporaries


def test_unusable_files_change_the_report_not_the_manifest(small_root, tmp_path):
    """A broken file and a too-small image added to the tree leave the manifest (what the
    later stages read) byte for byte, not even rewritten, and are listed in the report; a new
    image rewrites it."""
    root = tmp_path / "images"
    shutil.copytree(small_root, root)
    _, _, out, report = _index(root, tmp_path)
    before, stamp = out.read_bytes(), (out.stat().st_ino, out.stat().st_mtime_ns)
    (root / "real" / "cut.png").write_bytes((root / "real" / "r1.png").read_bytes()[:60])
    _png(root / "fake" / "ganA" / "small.png", np.random.default_rng(5), size=8)
    _, res, _, _ = _index(root, tmp_path)
    assert out.read_bytes() == before and (out.stat().st_ino, out.stat().st_mtime_ns) == stamp
    skipped = read_skipped(report).set_index("path")
    assert skipped.loc[str(root / "real" / "cut.png"), "status"] == "corrupt"
    assert skipped.loc[str(root / "fake" / "ganA" / "small.png"), "status"] == "too_small"
    assert res["summary"]["files"] == 17 + 3 + 2  # images, the unusable before and now
    _png(root / "fake" / "ganA" / "new.png", np.random.default_rng(6))
    df, _, _, _ = _index(root, tmp_path)
    assert out.read_bytes() != before and len(df) == 17 + 1


@pytest.fixture(scope="module")
def many_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many") / "images"
    rng = np.random.default_rng(1)
    for i in range(200):
        _png(root / "real" / f"{i:03d}.png", rng, size=32)
        _png(root / "fake" / "g" / f"{i:03d}.png", rng, size=32)
    return root


def test_splits_deterministic_disjoint_and_roughly_proportional(many_root, tmp_path):
    a, _, _, _ = _index(many_root, tmp_path / "a")
    b, _, _, _ = _index(many_root, tmp_path / "b", num_workers=2)  # process pool path
    pd.testing.assert_frame_equal(a, b)
    assert (a["status"] == "ok").all()
    assert a["id"].is_unique
    sets = {s: set(a.loc[a["split"] == s, "id"]) for s in ("train", "val", "test")}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"]
                or sets["val"] & sets["test"])
    frac = a["split"].value_counts(normalize=True)
    for split, want in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(frac[split] - want) < 0.07, (split, frac[split])
    for label in (0, 1):  # each class is split too, not only the whole set
        assert set(a.loc[a["label"] == label, "split"]) == {"train", "val", "test"}


def test_split_follows_content_not_path_and_respects_ratios(many_root, tmp_path):
    """Copying files elsewhere keeps their splits; other ratios move the boundaries."""
    copy = tmp_path / "copy"
    shutil.copytree(many_root / "real", copy / "real")
    a, _, _, _ = _index(many_root, tmp_path / "a")
    c, _, _, _ = _index(copy, tmp_path / "c")
    assert dict(zip(c["id"], c["split"], strict=True)).items() <= dict(
        zip(a["id"], a["split"], strict=True)).items()
    half, _, _, _ = _index(many_root, tmp_path / "h",
                           split={"train": 0.5, "val": 0.0, "test": 0.5})
    assert set(half["split"]) == {"train", "test"}
    assert abs((half["split"] == "train").mean() - 0.5) < 0.07
