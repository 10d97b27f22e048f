"""Benchmark presets scored as the papers score them, on small trees with the official names.

Each tree uses the folder names of the distributed archives (container folders, class
subfolders, the extra GAN folders, GenImage's archive names, AIGIBench's 25 subsets), goes
through the real index -> patches -> caption -> embed chain with the tiny backbones, and is
trained and evaluated through ``nsnet train`` / ``nsnet evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import build_cache, tiny_raw, write_params
from PIL import Image

from nsnet.config import ParamsError, params_from_dict
from nsnet.data.index_stage import read_skipped
from nsnet.data.layouts import classify
from nsnet.data.manifest import read_manifest
from nsnet.data.presets import AIGIBENCH_SUBSETS, PRESETS, PROGAN_CLASSES, get_preset
from nsnet.evaluation.protocol_rows import preset_table
from nsnet.stages.cli import main

_RNG = np.random.default_rng(16)
UFD_ROWS = ["progan", "cyclegan", "biggan", "stylegan", "gaugan", "stargan", "deepfake", "sitd",
            "san", "crn", "imle", "guided", "ldm_200", "ldm_200_cfg", "ldm_100", "glide_100_27",
            "glide_50_27", "glide_100_10", "dalle"]


def _fill(folder: Path, n: int, fake: bool, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = _RNG.integers(0, 256, (size, size, 3)).astype(np.float32)
        if fake:
            img[::2, ::2] = 255 - img[::2, ::2] * 0.2
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{folder.name}_{i:02d}.png")


def _pair(folder: Path, n_real: int, n_fake: int) -> None:
    if n_real:
        _fill(folder / "0_real", n_real, False)
    if n_fake:
        _fill(folder / "1_fake", n_fake, True)


def _run(work: Path, raw: dict, preset: str | None = None) -> tuple[dict, str, str]:
    """``nsnet train`` + ``nsnet evaluate`` on the cache in ``work``: (metrics, outputs).

    The metrics are the full results (``details/`` beside ``--out``; the ``--out`` file itself
    holds only the compared numbers)."""
    if preset:
        raw = {**raw, "protocol": {**raw["protocol"], "preset": preset}}
    params_file = write_params(work / f"params-{preset}.yaml", raw)
    common = ["--params", str(params_file), "--manifest", str(work / "cache/manifest.parquet"),
              "--features", str(work / "cache/features")]
    model = work / f"model-{preset}"
    runner = CliRunner()
    tr = runner.invoke(main, ["train", *common, "--out", str(model),
                              "--log", str(work / f"log-{preset}.csv")])
    assert tr.exit_code == 0, tr.output
    ev = runner.invoke(main, ["evaluate", *common, "--model", str(model),
                              "--out", str(work / f"metrics-{preset}.json"),
                              "--plots", str(work / f"plots-{preset}")])
    assert ev.exit_code == 0, ev.output
    return (json.loads((work / "details" / f"metrics-{preset}.json").read_text()), tr.output,
            ev.output)


def _printed_rows(output: str, split: str = "test") -> list[str]:
    """Row names of the printed table of ``split``, from the header to the mean line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().endswith(f"{split} (%)"))
    rows = []
    for line in lines[start + 2:]:
        if line.startswith("mean"):
            break
        rows.append(line[:22].strip())  # the name column (names may hold spaces)
    return rows


# ------------------------------------------------------------------------------ UniversalFakeDetect
@pytest.fixture(scope="module")
def ufd_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ufd")
    cnn = base / "CNNDetection"  # trainset.zip / valset.zip extract to progan_train, progan_val
    for cls in PROGAN_CLASSES:
        _pair(cnn / "progan_train" / cls, 1, 1)
    for cls in ("airplane", "car"):
        _pair(cnn / "progan_val" / cls, 1, 1)
    test = base / "ufd_test"
    gan = test / "CNN_synth_testset"  # CNNDetection's test archive, with its two extra folders
    for name, classes in (("progan", ("airplane", "cat")), ("cyclegan", ("apple", "horse")),
                          ("biggan", ()), ("stylegan", ("bedroom", "car")), ("gaugan", ()),
                          ("stargan", ()), ("deepfake", ()), ("seeingdark", ()), ("san", ()),
                          ("crn", ()), ("imle", ()), ("stylegan2", ("car",)),
                          ("whichfaceisreal", ())):
        if classes:
            for cls in classes:
                _pair(gan / name / cls, 1, 1)
        else:
            _pair(gan / name, 2, 2)
    diff = test / "diffusion_datasets"  # UFD's diffusion archive: two real pools, fakes only
    _pair(diff / "imagenet", 3, 0)
    _pair(diff / "laion", 2, 0)
    for name in UFD_ROWS[11:]:
        _pair(diff / name, 0, 2)
    raw = tiny_raw(base, train={"epochs": 2, "batch_size": 8}, caption={"max_new_tokens": 4})
    raw["data"]["roots"] = [str(cnn), {"path": str(test), "role": "test"}]
    work = base / "ws"
    build_cache(work, params_from_dict(raw))
    return work, raw, *_run(work, raw, "ufd")


def test_ufd_preset_prints_the_19_official_rows_with_their_real_pools(ufd_run):
    work, raw, metrics, train_out, eval_out = ufd_run
    test = metrics["test"]
    assert set(test["per_source"]) == set(UFD_ROWS) and test["rows"] == UFD_ROWS  # JSON order
    counts = {name: (m["n_real"], m["n_fake"]) for name, m in test["per_source"].items()}
    for name in UFD_ROWS[:11]:
        assert counts[name] == (2, 2), name  # own 0_real / 1_fake, over class subfolders
    assert counts["guided"] == (3, 2)  # the ImageNet reals
    for name in UFD_ROWS[12:]:
        assert counts[name] == (2, 2), name  # the LAION reals
    assert test["per_source"]["guided"]["real_pool"] == "imagenet"
    assert test["per_source"]["dalle"]["real_pool"] == "laion"
    assert test["per_source"]["sitd"]["sources"] == ["seeingdark"]
    assert test["not_in_preset"] == ["stylegan2", "whichfaceisreal"]
    assert test["mean_complete"] and test["mean_rows"] == UFD_ROWS
    assert test["mean"]["acc"] == pytest.approx(
        np.mean([m["acc"] for m in test["per_source"].values()]))
    assert metrics["protocol"]["preset"] == "ufd" and metrics["protocol"]["rows"] == UFD_ROWS
    assert _printed_rows(eval_out) == UFD_ROWS
    roc = pd.read_csv(work / "plots-ufd" / "roc.csv")  # curves over the preset's rows only
    n_real = 11 * 2 + 3 + 2
    assert roc["fpr"].iloc[-1] == 1.0 and len(pd.read_csv(work / "plots-ufd" / "confusion.csv")) \
        == n_real + 11 * 2 + 8 * 2
    assert "protocol.preset ufd: UniversalFakeDetect" in eval_out
    assert "not rows of the preset (not scored): stylegan2, whichfaceisreal" in eval_out
    assert "mean " in eval_out and "stylegan2" not in eval_out.split("test (%)")[1].split(
        "mean")[0]


def test_ufd_preset_trains_on_the_progan_classes_of_progan_train_and_val(ufd_run):
    work, raw, metrics, train_out, eval_out = ufd_run
    df = read_manifest(work / "cache/manifest.parquet", only_ok=True)
    train = df[df["path"].str.contains("/progan_train/")]
    assert set(train["split"]) <= {"train"} and set(train["source"]) == set(PROGAN_CLASSES)
    val = df[df["path"].str.contains("/progan_val/")]
    assert set(val["split"]) == {"val"} and set(val["source"]) == {"airplane", "car"}
    assert set(df.loc[df["path"].str.contains("/diffusion_datasets/"), "source"]) == {
        "imagenet", "laion", *UFD_ROWS[11:]}  # the container folder is not a source
    config = json.loads((work / "model-ufd" / "config.json").read_text())["training"]
    assert config["train_sources"] == sorted(PROGAN_CLASSES)
    assert config["preset"] == "ufd" and config["preset_train_missing"] == []
    assert set(metrics["val"]["per_source"]) == {"airplane", "car"}


# ------------------------------------------------------------------------------------- GenImage
GENIMAGE_ARCHIVES = {  # Google Drive folder / archive folder of each generator
    "Midjourney": ("Midjourney", "imagenet_midjourney"),
    "SD V1.4": ("stable_diffusion_v_1_4", "imagenet_ai_0419_sdv4"),
    "SD V1.5": ("stable_diffusion_v_1_5", "imagenet_ai_0424_sdv5"),
    "ADM": ("ADM", "imagenet_ai_0508_adm"), "GLIDE": ("glide", "imagenet_glide"),
    "Wukong": ("wukong", "imagenet_ai_0424_wukong"), "VQDM": ("VQDM", "imagenet_ai_0419_vqdm"),
    "BigGAN": ("BigGAN", "imagenet_ai_0419_biggan"),
}


@pytest.fixture(scope="module")
def genimage_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("genimage")
    root = base / "GenImage"
    for i, (top, archive) in enumerate(GENIMAGE_ARCHIVES.values()):
        gen = root / top / archive
        n_train = 6 if archive.endswith("sdv4") else 1
        _fill(gen / "train" / "ai", n_train, True)
        _fill(gen / "train" / "nature", n_train, False)
        _fill(gen / "val" / "ai", 2 + i % 2, True)  # different counts per generator
        _fill(gen / "val" / "nature", 2, False)
    # GenImage's published lists (their own path styles), pointing at two of our files
    bad_sd = root / "stable_diffusion_v_1_4/imagenet_ai_0419_sdv4/train/ai/ai_05.png"
    bad_sd.write_bytes(b"not a png")  # corrupted, as the list says
    lists = base / "lists"
    lists.mkdir()
    (lists / "imagenet_ai_0419_sdv4.txt").write_text(
        "./imagenet_ai_0419_sdv4/train/ai/ai_05.png\n"
        "./imagenet_ai_0419_sdv4/train/ai/033_sdv4_00152.png\n")
    (lists / "imagenet_glide.txt").write_text("./data/imagenet_glide/val/ai/ai_00.png\n")
    raw = tiny_raw(root, train={"epochs": 2, "batch_size": 4}, caption={"max_new_tokens": 4})
    raw["data"]["skip_lists"] = [str(lists / "imagenet_ai_0419_sdv4.txt"),
                                 str(lists / "imagenet_glide.txt")]
    work = base / "ws"
    build_cache(work, params_from_dict(raw))
    return work, raw, *_run(work, raw, "genimage")


def test_genimage_preset_rows_in_table_3_order_from_the_archive_folders(genimage_run):
    work, raw, metrics, train_out, eval_out = genimage_run
    test = metrics["test"]
    names = list(GENIMAGE_ARCHIVES)
    assert set(test["per_source"]) == set(names) and test["mean_rows"] == names
    assert _printed_rows(eval_out) == names
    for i, name in enumerate(names):
        m = test["per_source"][name]
        fakes = 2 + i % 2 - (name == "GLIDE")  # GLIDE's listed val fake is skipped
        assert (m["n_real"], m["n_fake"]) == (2, fakes), name
    assert test["mean_complete"] and test["mean"]["ap"] == pytest.approx(
        np.mean([m["ap"] for m in test["per_source"].values()]))
    config = json.loads((work / "model-genimage" / "config.json").read_text())["training"]
    assert config["train_sources"] == ["SDv1.4"]


def test_genimage_skip_lists_leave_listed_files_out_with_a_reason(genimage_run):
    work, *_ = genimage_run
    df = read_skipped(work / "cache/index_report.json")  # not in the manifest
    assert not read_manifest(work / "cache/manifest.parquet")["status"].eq("skip_listed").any()
    listed = df[df["status"] == "skip_listed"].sort_values("path")
    assert [Path(p).name for p in listed["path"]] == ["ai_00.png", "ai_05.png"]  # glide, sdv4
    assert listed["error"].tolist() == ["listed in imagenet_glide.txt:1",
                                        "listed in imagenet_ai_0419_sdv4.txt:1"]
    report = json.loads((work / "cache/index_report.json").read_text())
    assert report["summary"]["skipped"] == {"skip_listed": 2}  # the corrupt file was not decoded
    assert report["skip_list_unmatched"] == ["imagenet_ai_0419_sdv4/train/ai/033_sdv4_00152.png"]


def test_strict_index_does_not_count_listed_files(genimage_run, tmp_path):
    work, raw, *_ = genimage_run
    res = CliRunner().invoke(main, ["index", "--strict", "--params",
                                    str(write_params(tmp_path / "p.yaml", raw)),
                                    "--out", str(tmp_path / "m.parquet"),
                                    "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output  # the corrupt file is listed, so not a surprise
    assert "skip_listed: 2 file(s)" in res.output and "imagenet_glide.txt:1" in res.output
    unlisted = {**raw, "data": {**raw["data"], "skip_lists": []}}
    res = CliRunner().invoke(main, ["index", "--strict", "--params",
                                    str(write_params(tmp_path / "q.yaml", unlisted)),
                                    "--out", str(tmp_path / "m2.parquet"),
                                    "--report", str(tmp_path / "r2.json")])
    assert res.exit_code == 1 and "ai_05.png" in res.output


def test_missing_skip_list_is_one_clear_error(tmp_path):
    _pair(tmp_path / "imgs", 1, 1)
    raw = tiny_raw(tmp_path / "imgs")
    raw["data"]["skip_lists"] = [str(tmp_path / "nope.txt")]
    params_file = write_params(tmp_path / "p.yaml", raw)
    res = CliRunner().invoke(main, ["index", "--params", str(params_file),
                                    "--out", str(tmp_path / "m.parquet"),
                                    "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "data.skip_lists[0]" in res.output and "nope.txt" in res.output


# ------------------------------------------------------------------------------------ AIGIBench
@pytest.fixture(scope="module")
def aigibench_cache(tmp_path_factory):
    base = tmp_path_factory.mktemp("aigibench")
    root = base / "AIGIBench"
    for src in ("car", "cat", "chair", "horse", "sdv1.4"):
        _pair(root / "train" / src, 2, 2)
        _pair(root / "val" / src, 1, 1)
    for name in AIGIBENCH_SUBSETS:
        folder = "Midjourney-V6" if name == "Midjourney" else name  # the README's spelling
        _pair(root / "test" / folder, 0 if name == "SocialRF" else 1, 1)  # SocialRF: no reals
    raw = tiny_raw(root, train={"epochs": 2, "batch_size": 8}, caption={"max_new_tokens": 4})
    work = base / "ws"
    build_cache(work, params_from_dict(raw))
    return work, raw


@pytest.mark.parametrize(("preset", "training"), [
    ("aigibench-1", ["car", "cat", "chair", "horse"]),
    ("aigibench-2", ["car", "cat", "chair", "horse", "sdv1.4"]),
])
def test_aigibench_settings_train_sources_and_25_rows_with_a_missing_one(aigibench_cache, preset,
                                                                         training):
    work, raw = aigibench_cache
    metrics, train_out, eval_out = _run(work, raw, preset)
    config = json.loads((work / f"model-{preset}" / "config.json").read_text())["training"]
    assert config["train_sources"] == sorted(training)
    test = metrics["test"]
    assert test["rows"] == list(AIGIBENCH_SUBSETS) and len(test["rows"]) == 25
    present = [n for n in AIGIBENCH_SUBSETS if n != "SocialRF"]
    assert set(test["per_source"]) == set(present)
    assert all((m["n_real"], m["n_fake"]) == (1, 1) for m in test["per_source"].values())
    assert test["per_source"]["Midjourney"]["sources"] == ["Midjourney-V6"]
    assert test["missing"] == {"SocialRF": "no real test images"}
    assert not test["mean_complete"] and test["mean_label"] == "mean (24/25 rows)"
    assert test["mean_rows"] == present
    assert test["mean"]["acc"] == pytest.approx(np.mean([test["per_source"][n]["acc"]
                                                         for n in present]))
    assert _printed_rows(eval_out) == list(AIGIBENCH_SUBSETS)
    assert "SocialRF" in eval_out and "missing: no real test images" in eval_out
    assert "mean (24/25 rows)" in eval_out and "partial mean: 24 of 25" in eval_out
    assert test["not_in_preset"] == [] and "not rows of the preset" not in eval_out


def test_compare_and_evaluate_degraded_print_the_preset_rows(aigibench_cache, tmp_path):
    work, raw = aigibench_cache
    _run(work, raw, "aigibench-1")
    params_file = work / "params-aigibench-1.yaml"
    common = ["--params", str(params_file), "--manifest", str(work / "cache/manifest.parquet"),
              "--features", str(work / "cache/features")]
    res = CliRunner().invoke(main, ["compare", *common, "--heads", "composite_probe",
                                    "--out", str(tmp_path / "compare.json")])
    assert res.exit_code == 0, res.output
    names = [line[:18].strip() for line in res.stdout.splitlines()[2:]]  # not the progress bar
    present = [n for n in AIGIBENCH_SUBSETS if n != "SocialRF"]
    assert names[:25] == [*present, "mean (24/25 rows)"]
    res = CliRunner().invoke(main, ["evaluate-degraded", *common, "--per-source",
                                    "--model", str(work / "model-aigibench-1"),
                                    "--metrics", str(tmp_path / "metrics")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "metrics" / "details" / "degradations.json").read_text())
    assert summary["preset"] == "aigibench-1"
    assert sorted(summary["degradations"]["clean"]["mean_rows"]) == sorted(present)


def test_preset_training_sources_partly_or_wholly_absent(aigibench_cache, genimage_run, tmp_path):
    def train(work: Path, raw: dict, preset: str):
        raw = {**raw, "protocol": {**raw["protocol"], "preset": preset}}
        return CliRunner().invoke(main, [
            "train", "--params", str(write_params(tmp_path / f"{preset}.yaml", raw)),
            "--manifest", str(work / "cache/manifest.parquet"),
            "--features", str(work / "cache/features"),
            "--out", str(tmp_path / preset), "--log", str(tmp_path / f"{preset}.csv")])

    # UFD trains on all 20 ProGAN classes: 4 of them are here, so training goes on with a note
    res = train(*aigibench_cache, "ufd")
    assert res.exit_code == 0, res.output
    assert "not found in the training data: airplane, bicycle, bird" in res.output
    # none of them in GenImage: one clear error, no traceback
    res = train(*genimage_run[:2], "ufd")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "protocol.preset 'ufd' trains on airplane, bicycle" in res.output
    assert "SDv1.4" in res.output  # the sources that were found


# --------------------------------------------------------------------------- units and params
def test_preset_names_are_the_defined_presets():
    from nsnet.registry import PRESETS as PRESET_NAMES

    assert PRESET_NAMES.names() == ("none", *PRESETS)
    assert get_preset("none") is None
    assert len(PRESETS["ufd"].rows) == 19 and len(PRESETS["genimage"].rows) == 8


def test_preset_and_explicit_sources_together_are_rejected():
    raw = tiny_raw("data")
    raw["protocol"] = {"preset": "ufd", "train_sources": ["car"]}
    with pytest.raises(ParamsError, match="protocol.train_sources: protocol.preset 'ufd' sets"):
        params_from_dict(raw)
    raw["protocol"] = {"preset": "ufd-2"}
    with pytest.raises(ParamsError, match="protocol.preset: 'ufd-2' is not one of"):
        params_from_dict(raw)


@pytest.mark.parametrize(("dirs", "expected"), [
    (("progan_train", "car", "0_real"), (0, "car", "train")),
    (("progan_val", "horse", "1_fake"), (1, "horse", "val")),
    (("train", "progan", "airplane", "1_fake"), (1, "airplane", "train")),  # UFD's train tree
    (("CNN_synth_testset", "progan", "cat", "1_fake"), (1, "progan", "test")),
    (("diffusion_datasets", "laion", "0_real"), (0, "laion", "test")),
    (("test", "progan", "car", "0_real"), (0, "progan", "test")),
    (("test", "ProGAN", "1_fake"), (1, "ProGAN", "test")),
    (("progan_train", "train", "0_real"), (0, "train", "train")),  # ProGAN's class "train"
    (("CNN_synth_testset", "progan", "train", "1_fake"), (1, "progan", "test")),
    (("datasets", "test", "biggan", "0_real"), (0, "biggan", "test")),  # UFD README tree
])
def test_distributed_folder_names_give_source_and_split(dirs, expected):
    assert classify(dirs, "ufd") == expected


def test_preset_table_counts_exactly_half_as_real():
    frame = pd.DataFrame({"label": [0, 1, 0, 1], "source": ["laion", "dalle", "imagenet", "guided"],
                          "prob": [0.5, 0.5, 0.2, 0.9]})
    table = preset_table(frame, PRESETS["ufd"], 0.5)
    assert table["per_source"]["dalle"]["real_acc"] == 1.0
    assert table["per_source"]["dalle"]["fake_acc"] == 0.0
    assert len(table["missing"]) == 17 and table["mean_label"] == "mean (2/19 rows)"
