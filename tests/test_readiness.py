"""A tree that cannot train is refused by `nsnet index`, before the expensive stages, with
counts in words (never numpy reprs such as `labels [np.int64(0)]`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nsnet.config import params_from_dict
from nsnet.data.index_stage import build_index
from nsnet.data.manifest import read_manifest
from nsnet.data.readiness import MIN_VAL_IMAGES, training_problems, validation_warnings
from nsnet.stages.cli import main
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


# ----------------------------------------------------------------------------- too small a val


def _val_counts(manifest, source: str | None = None) -> tuple[int, int]:
    val = manifest[(manifest["split"] == "val") & (manifest["status"] == "ok")]
    if source is not None:
        val = val[val["source"] == source]
    return int((val["label"] == 0).sum()), int((val["label"] == 1).sum())


def test_a_small_val_split_and_a_generator_without_val_images_are_warned(tmp_path):
    """Official val folders with 4 real and 4 generated images, generator b none: index and
    train print one warning per problem, with the counts; the tree still trains."""
    root = _tree(tmp_path / "images", {"train/real": 30, "train/fake/a": 20,
                                       "train/fake/b": 20, "val/real": 4, "val/fake/a": 4})
    res = _index(tmp_path, root, evaluate={"threshold": "val_acc"})
    assert res.exit_code == 0, res.output
    more = "raise data.split.val (now 0.15), which sends more of each folder without a val/"
    want = [
        "warning: val has 4 real and 4 generated images: too few (under 20 of each) to choose "
        f"the epoch and evaluate.threshold=val_acc reliably; add images, or {more}",
        "warning: generator a has 4 generated images in val (20 in train): too few (under 20) "
        "for its images to count in choosing the epoch and evaluate.threshold=val_acc; add a "
        f"images, or {more}",
        "warning: generator b has 0 generated images in val (20 in train): too few (under 20) ",
    ]
    lines = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 3, res.output
    assert all(line.startswith(w) for line, w in zip(lines, want, strict=True)), lines
    res = CliRunner().invoke(main, ["train", "--params", str(tmp_path / "params.yaml"),
                                    "--manifest", str(tmp_path / "m.parquet"), "--features",
                                    str(tmp_path / "absent.h5"), "--out", str(tmp_path / "m"),
                                    "--log", str(tmp_path / "log.csv")])
    assert [line for line in res.output.splitlines() if line.startswith("warning: ")] == lines


def test_genimage_val_carved_from_a_few_training_images_is_warned(tmp_path):
    """GenImage's val folders are its test set, so val is carved out of train by content hash:
    with a dozen images per generator it holds a handful, which the warning counts."""
    folders = {}
    for gen, n in (("ADM", 12), ("BigGAN", 3)):
        folders.update({f"{gen}/train/ai": n, f"{gen}/train/nature": n,
                        f"{gen}/val/ai": 4, f"{gen}/val/nature": 4})
    root = _tree(tmp_path / "GenImage", folders)
    res = _index(tmp_path, root, data={"roots": [str(root)], "layout": "genimage"})
    assert res.exit_code == 0, res.output
    manifest = read_manifest(tmp_path / "m.parquet")
    n_real, n_fake = _val_counts(manifest)
    assert f"warning: val has {n_real} real and {n_fake} generated images: too few" in res.output
    for gen in ("ADM", "BigGAN"):
        n = _val_counts(manifest, gen)[1]
        n_train = int(((manifest["source"] == gen) & (manifest["split"] == "train")
                       & (manifest["label"] == 1)).sum())
        assert (f"warning: generator {gen} has {n} generated image{'' if n == 1 else 's'} in "
                f"val ({n_train} in train): too few (under 20)") in res.output, res.output


def test_a_val_of_twenty_images_of_each_kind_is_not_warned(tmp_path):
    root = _tree(tmp_path / "images", {"train/real": 20, "train/fake/a": 20, "val/real": 20,
                                       "val/fake/a": 20})
    res = _index(tmp_path, root, evaluate={"threshold": "val_acc", "calibration": "platt"})
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    manifest = read_manifest(tmp_path / "m.parquet")
    params = params_from_dict({"data": {"roots": [str(root)]},
                               "evaluate": {"threshold": "val_acc", "calibration": "platt"}})
    assert validation_warnings(manifest, params) == []
    one_less = manifest.drop(manifest.index[(manifest["split"] == "val")
                                            & (manifest["label"] == 1)][:1])
    split, generator = validation_warnings(one_less, params)  # 19 is under MIN_VAL_IMAGES
    assert split.startswith(f"val has 20 real and 19 generated images: too few (under "
                            f"{MIN_VAL_IMAGES} of each) to choose the epoch and evaluate."
                            "threshold=val_acc and evaluate.calibration=platt reliably")
    assert generator.startswith("generator a has 19 generated images in val (20 in train)")
    fixed = params_from_dict({"data": {"roots": [str(root)]}})
    assert validation_warnings(one_less, fixed)[0].split("; ")[0].endswith(
        "to choose the epoch reliably")  # a fixed threshold: only the epoch is chosen on val
