"""A tree that cannot train is refused by `nsnet index`, before the expensive stages, with
counts in words (never numpy reprs such as `labels [np.int64(0)]`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.config import params_from_dict
from pipeline.data.index_stage import build_index
from pipeline.data.manifest import read_manifest
from pipeline.data.readiness import training_problems
from stages.cli import main
from tests.conftest import write_params

NUMPY_REPRS = ("np.int64", "np.float64", "np.str_", "array(", "dtype=")


def _tree(root: Path, folders: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for folder, n in folders.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                root / folder / f"{i:03d}.png")
    return root


def _index(tmp_path: Path, root: Path, *extra: str, **sections):
    params = write_params(tmp_path / "params.yaml", {"data": {"roots": [str(root)]}, **sections})
    res = CliRunner().invoke(main, ["index", "--params", str(params), "--out",
                                    str(tmp_path / "m.parquet"), "--report",
                                    str(tmp_path / "r.json"), *extra])
    assert "Traceback" not in res.output
    assert not any(r in res.output for r in NUMPY_REPRS), res.output
    return res


@pytest.mark.parametrize(("folders", "counts"), [
    ({"real": 40}, "0 generated"), ({"fake/gen": 40}, "0 real")])
def test_index_refuses_a_tree_with_one_kind_of_image(tmp_path, folders, counts):
    root = _tree(tmp_path / "images", folders)
    res = _index(tmp_path, root)
    assert res.exit_code == 1, res.output
    assert "index: cannot train on these images" in res.output
    assert "training needs real and generated images in the train split" in res.output
    assert counts in res.output and f"data.roots: {root}" in res.output
    assert (tmp_path / "m.parquet").exists()  # the manifest is there to look at
    res = _index(tmp_path, root, "--no-check-training")  # a test-only tree, scored elsewhere
    assert res.exit_code == 0, res.output


def test_index_accepts_a_trainable_tree_and_checks_the_protocol(tmp_path):
    root = _tree(tmp_path / "images", {"real": 30, "fake/a": 15, "fake/b": 15})
    assert _index(tmp_path, root).exit_code == 0
    res = _index(tmp_path, root, protocol={"train_sources": ["real", "c"]})
    assert res.exit_code == 1 and "protocol.train_sources names c" in res.output
    res = _index(tmp_path, root, protocol={"train_sources": ["a", "b"]})
    assert res.exit_code == 1 and "0 real" in res.output
    assert "protocol.train_sources: a, b" in res.output


def test_a_decision_fit_on_validation_needs_both_kinds_there(tmp_path):
    root = _tree(tmp_path / "images", {"real": 30, "fake/a": 30})
    params = params_from_dict({"data": {"roots": [str(root)]},
                               "evaluate": {"threshold": "val_acc", "calibration": "platt"}})
    build_index(params, tmp_path / "m.parquet", tmp_path / "r.json")
    manifest = read_manifest(tmp_path / "m.parquet")
    assert training_problems(manifest, params) == []
    no_fake_val = manifest[~((manifest["split"] == "val") & (manifest["label"] == 1))]
    (problem,) = training_problems(no_fake_val, params)
    assert problem.startswith("evaluate.threshold=val_acc and evaluate.calibration=platt are "
                              "fit on the validation split, which has ")
    assert problem.split("which has ")[1].startswith(
        f"{int((no_fake_val['split'] == 'val').sum())} real and 0 generated")
    fixed = params_from_dict({"data": {"roots": [str(root)]}})
    assert training_problems(no_fake_val, fixed) == []  # a fixed threshold needs no val fakes


def test_train_says_what_is_missing_before_reading_features(tmp_path):
    root = _tree(tmp_path / "images", {"real": 30})
    assert _index(tmp_path, root, "--no-check-training").exit_code == 0
    res = CliRunner().invoke(main, ["train", "--params", str(tmp_path / "params.yaml"),
                                    "--manifest", str(tmp_path / "m.parquet"), "--features",
                                    str(tmp_path / "absent.h5"), "--out", str(tmp_path / "m"),
                                    "--log", str(tmp_path / "log.csv")])
    assert res.exit_code == 1, res.output
    assert re.search(r"train split; it has \d+ real and 0 generated", res.output), res.output
    assert "absent.h5" not in res.output
    assert not any(r in res.output for r in NUMPY_REPRS), res.output
