"""Benchmark folder layouts through the index stage: labels, sources and splits.

Each test builds a small tree of real image files (64 px PNG/JPEG) in the shape of GenImage,
UniversalFakeDetect (test set and ProGAN training set), AIGIBench or a plain real/fake folder,
and checks what ``nsnet.manifest.build_index`` records for every file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_params
from PIL import Image

from nsnet.config import ParamsError
from nsnet.data.index_stage import build_index
from nsnet.data.layouts import LayoutError, classify, detect_layout, genimage_name
from nsnet.data.manifest import read_manifest

_RNG = np.random.default_rng(11)


def _img(path: Path, fmt: str = "png") -> None:
    """A distinct 64 x 64 image file (random pixels, so no two files share content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = _RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path.parent / f"{path.name}.{fmt}", quality=95)


def _fill(folder: Path, n: int, fmt: str = "png", prefix: str = "") -> None:
    for i in range(n):
        _img(folder / f"{prefix}{i:03d}", fmt)


def _index(tmp_path: Path, roots: list, **data) -> tuple[pd.DataFrame, dict]:
    params = tiny_params(tmp_path, data={"roots": roots, **data})
    out, report = tmp_path / "m.parquet", tmp_path / "report.json"
    build_index(params, out, report)
    df = read_manifest(out)
    assert (df["status"] == "ok").all()
    return df, json.loads(report.read_text())


def _rel(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    out = df.copy()
    out["rel"] = [str(Path(p).relative_to(root.absolute())) for p in df["path"]]
    return out.set_index("rel")


@pytest.fixture(scope="module")
def genimage(tmp_path_factory) -> Path:
    """Two generators in GenImage's download layout ``<Gen>/<subset>/{train,val}/{ai,nature}``."""
    root = tmp_path_factory.mktemp("genimage") / "GenImage"
    for gen, sub in (("stable_diffusion_v_1_4", "imagenet_ai_0419_sdv4"),
                     ("ADM", "imagenet_ai_0508_adm")):
        for split, n in (("train", 12), ("val", 4)):
            _fill(root / gen / sub / split / "ai", n, "png", f"{gen}_{split}_ai")
            _fill(root / gen / sub / split / "nature", n, "jpeg", f"{gen}_{split}_nat")
    return root


def test_genimage_labels_sources_and_official_split(genimage, tmp_path):
    assert detect_layout(genimage) == "genimage"
    df, _ = _index(tmp_path, [str(genimage)])
    assert set(df["source"]) == {"SDv1.4", "ADM"}
    rel = _rel(df, genimage)
    sd = "stable_diffusion_v_1_4/imagenet_ai_0419_sdv4"
    assert rel.loc[f"{sd}/train/ai/stable_diffusion_v_1_4_train_ai000.png", "label"] == 1
    assert rel.loc[f"{sd}/train/nature/stable_diffusion_v_1_4_train_nat000.jpeg", "label"] == 0
    # GenImage's val folders are its test set; train keeps a deterministic val share
    assert set(rel.loc[rel.index.str.contains("/val/"), "split"]) == {"test"}
    train_side = rel.loc[rel.index.str.contains("/train/"), "split"]
    assert set(train_side) == {"train", "val"}
    assert (train_side == "train").sum() > (train_side == "val").sum()
    (tmp_path / "again").mkdir()
    again, _ = _index(tmp_path / "again", [str(genimage)])
    assert again["split"].tolist() == df["split"].tolist()  # deterministic


@pytest.mark.parametrize("folder,name", [
    ("imagenet_ai_0419_sdv4", "SDv1.4"), ("stable_diffusion_v_1_5", "SDv1.5"),
    ("imagenet_midjourney", "Midjourney"), ("imagenet_ai_0508_adm", "ADM"),
    ("imagenet_glide", "GLIDE"), ("imagenet_ai_0424_wukong", "Wukong"),
    ("imagenet_ai_0419_vqdm", "VQDM"), ("imagenet_ai_0419_biggan", "BigGAN"),
    ("SD1.4", "SDv1.4"), ("my_generator", None),
])
def test_genimage_canonical_generator_names(folder, name):
    assert genimage_name([folder]) == name


@pytest.fixture(scope="module")
def ufd_test(tmp_path_factory) -> Path:
    """UFD test set: classes under progan, none under biggan, diffusion fakes with LAION reals."""
    root = tmp_path_factory.mktemp("ufd") / "ufd_test"
    for cls in ("airplane", "car"):
        _fill(root / "progan" / cls / "0_real", 3, "png", f"pg_{cls}_r")
        _fill(root / "progan" / cls / "1_fake", 3, "png", f"pg_{cls}_f")
    _fill(root / "biggan" / "0_real", 4, "png", "bg_r")
    _fill(root / "biggan" / "1_fake", 4, "png", "bg_f")
    _fill(root / "dalle" / "1_fake", 4, "png", "da_f")
    _fill(root / "ldm_200" / "1_fake", 4, "png", "ldm_f")
    _fill(root / "laion" / "0_real", 5, "jpg", "la_r")
    return root


@pytest.fixture(scope="module")
def progan_train(tmp_path_factory) -> Path:
    """ProGAN training set as CNNDetection ships it: ``{train,val}/<class>/{0_real,1_fake}``."""
    root = tmp_path_factory.mktemp("progan") / "progan"
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("car", "cat", "chair", "horse", "airplane"):
            _fill(root / split / cls / "0_real", n, "png", f"{split}_{cls}_r")
            _fill(root / split / cls / "1_fake", n, "png", f"{split}_{cls}_f")
    return root


def test_ufd_test_set_as_test_root(ufd_test, tmp_path):
    assert detect_layout(ufd_test) == "ufd"
    df, _ = _index(tmp_path, [{"path": str(ufd_test), "role": "test"}])
    assert set(df["split"]) == {"test"}
    rel = _rel(df, ufd_test)
    assert rel.loc["progan/car/0_real/pg_car_r000.png", ["label", "source"]].tolist() == \
        [0, "progan"]
    assert rel.loc["progan/car/1_fake/pg_car_f000.png", ["label", "source"]].tolist() == \
        [1, "progan"]
    assert rel.loc["biggan/1_fake/bg_f000.png", "source"] == "biggan"
    assert set(df.loc[df["label"] == 1, "source"]) == {"progan", "biggan", "dalle", "ldm_200"}
    assert set(df.loc[df["source"] == "laion", "label"]) == {0}


def test_progan_training_layout_keeps_official_train_and_val(progan_train, tmp_path):
    df, _ = _index(tmp_path, [str(progan_train)])
    rel = _rel(df, progan_train)
    assert rel.loc["train/cat/1_fake/train_cat_f000.png", ["label", "source", "split"]].tolist() \
        == [1, "cat", "train"]
    assert set(rel.loc[rel.index.str.startswith("val/"), "split"]) == {"val"}
    assert set(rel.loc[rel.index.str.startswith("train/"), "split"]) == {"train"}
    assert set(df["source"]) == {"car", "cat", "chair", "horse", "airplane"}


def test_train_root_plus_test_root_roles(progan_train, ufd_test, tmp_path):
    """Train on ProGAN (its own train/val), test on the UFD generators."""
    df, report = _index(tmp_path, [{"path": str(progan_train), "role": "train"},
                                   {"path": str(ufd_test), "role": "test", "layout": "ufd"}])
    from_train = df["path"].str.startswith(str(progan_train.absolute()))
    assert set(df.loc[from_train, "split"]) == {"train", "val"}
    assert set(df.loc[~from_train, "split"]) == {"test"}
    assert report["provenance"]["root_roles"] == ["train", "test"]
    assert report["provenance"]["root_layouts"] == ["auto", "ufd"]


def test_train_role_without_val_folder_carves_val(ufd_test, tmp_path):
    """A root without split folders and role train: train/val only, by content hash."""
    df, _ = _index(tmp_path, [{"path": str(ufd_test), "role": "train"}])
    assert set(df["split"]) == {"train", "val"}


def test_aigibench_layout(tmp_path):
    """AIGIBench: train/{car,...,sdv1.4}, val/<...>, test/<subset>, all with 0_real/1_fake."""
    root = tmp_path / "AIGIBench"
    for cls in ("car", "sdv1.4"):
        _fill(root / "train" / cls / "0_real", 3, "png", f"tr_{cls}_r")
        _fill(root / "train" / cls / "1_fake", 3, "png", f"tr_{cls}_f")
        _fill(root / "val" / cls / "0_real", 2, "png", f"va_{cls}_r")
        _fill(root / "val" / cls / "1_fake", 2, "png", f"va_{cls}_f")
    for subset in ("ProGAN", "FLUX1-dev", "CommunityAI"):
        _fill(root / "test" / subset / "0_real", 2, "jpg", f"te_{subset}_r")
        _fill(root / "test" / subset / "1_fake", 2, "png", f"te_{subset}_f")
    for layout in ("auto", "aigibench"):
        out = tmp_path / layout
        out.mkdir()
        df, _ = _index(out, [str(root)], layout=layout)
        rel = _rel(df, root)
        assert rel.loc["test/FLUX1-dev/1_fake/te_FLUX1-dev_f000.png",
                       ["label", "source", "split"]].tolist() == [1, "FLUX1-dev", "test"]
        assert rel.loc["train/sdv1.4/0_real/tr_sdv1.4_r000.png",
                       ["label", "source", "split"]].tolist() == [0, "sdv1.4", "train"]
        assert set(rel.loc[rel.index.str.startswith("val/"), "split"]) == {"val"}
        assert set(df.loc[df["split"] == "test", "source"]) == {"ProGAN", "FLUX1-dev",
                                                                "CommunityAI"}


def test_plain_real_fake_with_generator_subfolders(tmp_path):
    root = tmp_path / "mine"
    _fill(root / "real", 20, "jpg", "r")
    _fill(root / "fake" / "ganA", 10, "png", "a")
    _fill(root / "fake" / "diffB", 10, "jpeg", "b")
    _img(root / "loose_image")  # outside any label folder: reported, not indexed
    assert detect_layout(root) == "real_fake"
    df, report = _index(tmp_path, [str(root)])
    rel = _rel(df, root)
    assert rel.loc["real/r000.jpg", ["label", "source"]].tolist() == [0, "real"]
    assert rel.loc["fake/ganA/a000.png", ["label", "source"]].tolist() == [1, "ganA"]
    assert set(df["source"]) == {"real", "ganA", "diffB"}
    assert set(df["split"]) == {"train", "val", "test"}  # content-hash split
    assert report["summary"]["unlabelled_files"] == 1
    assert report["unlabelled"][0].endswith("loose_image.png")


def test_plain_real_fake_without_subfolders_and_split_folders(tmp_path):
    root = tmp_path / "flat"
    _fill(root / "train" / "real", 6, "png", "tr")
    _fill(root / "train" / "fake", 6, "png", "tf")
    _fill(root / "test" / "0_real", 3, "png", "er")
    _fill(root / "test" / "1_fake", 3, "png", "ef")
    df, _ = _index(tmp_path, [str(root)], layout="real_fake")
    rel = _rel(df, root)
    assert rel.loc["train/fake/tf000.png", ["label", "source"]].tolist() == [1, "fake"]
    assert set(rel.loc[rel.index.str.startswith("test/"), "split"]) == {"test"}
    assert set(rel.loc[rel.index.str.startswith("train/"), "split"]) <= {"train", "val"}


def test_classify_rules():
    assert classify(("sdv4", "train", "ai"), "genimage") == (1, "SDv1.4", "train")
    assert classify(("ADM", "val", "nature", "n0144"), "genimage") == (0, "ADM", "test")
    assert classify(("stylegan", "bedroom", "1_fake"), "ufd") == (1, "stylegan", None)
    assert classify(("test", "guided", "0_real"), "aigibench") == (0, "guided", "test")
    assert classify(("notes",), "real_fake") is None


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "empty" / "photos").mkdir(parents=True)
    with pytest.raises(LayoutError, match="no label folders"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(ParamsError, match=r"data.roots\[0\].role"):
        tiny_params(tmp_path, data={"roots": [{"path": "x", "role": "eval"}]})
    with pytest.raises(ParamsError, match=r"unknown key data.roots\[0\].kind"):
        tiny_params(tmp_path, data={"roots": [{"path": "x", "kind": "test"}]})
    with pytest.raises(ParamsError, match=r"data.roots\[0\].path"):
        tiny_params(tmp_path, data={"roots": [{"role": "test"}]})
