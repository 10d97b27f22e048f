"""Benchmark protocols end to end on small trees: train on some generators, test on all.

* GenImage: train on SD v1.4 (its train folders), test on every generator's val folders.
* UniversalFakeDetect: a ProGAN training root (role train, 2 of its classes) and a test root
  (role test) whose diffusion folders share the same LAION reals, as the real test set does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_cache, tiny_raw, write_params
from PIL import Image

from nsnet.config import params_from_dict
from nsnet.evaluation.evaluate_stage import run_evaluate
from nsnet.extraction.cached_features import load_features, select
from nsnet.heads.train_stage import run_train
from nsnet.metrics import format_table
from nsnet.stages.cli import main

_RNG = np.random.default_rng(5)


def _fill(folder: Path, n: int, prefix: str, fake: bool) -> list[Path]:
    """``n`` 64 px PNGs; fakes get a periodic texture so a head has something to learn."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = _RNG.integers(0, 256, (64, 64, 3)).astype(np.float32)
        if fake:
            img[::2, ::2] = 255 - img[::2, ::2] * 0.2
        path = folder / f"{prefix}{i:02d}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        out.append(path)
    return out


def _run(workdir: Path, raw: dict) -> tuple[dict, dict, Path]:
    params = params_from_dict(raw)
    cache = build_cache(workdir, params)
    info = run_train(params, cache.manifest, cache.features, workdir / "models" / "detector",
                     workdir / "train_log.csv")
    metrics = run_evaluate(params, cache.manifest, cache.features,
                           workdir / "models" / "detector", workdir / "metrics.json",
                           workdir / "plots")
    return info, metrics, cache.manifest


@pytest.fixture(scope="module")
def genimage_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gi") / "GenImage"
    for gen in ("stable_diffusion_v_1_4", "imagenet_ai_0508_adm", "imagenet_midjourney"):
        for split, n in (("train", 5), ("val", 3)):
            _fill(root / gen / split / "ai", n, f"{gen}{split}a", True)
            _fill(root / gen / split / "nature", n, f"{gen}{split}n", False)
    work = root.parent / "ws"
    raw = tiny_raw(root, protocol={"train_sources": ["SDv1.4"], "test_sources": []},
                   train={"epochs": 3, "batch_size": 8}, caption={"max_new_tokens": 4})
    return (work, raw, *_run(work, raw))


def test_genimage_train_on_sd14_test_on_all(genimage_run):
    work, raw, info, metrics, manifest = genimage_run
    assert info.train_sources == ("SDv1.4",)
    test = metrics["test"]
    assert set(test["per_source"]) == {"SDv1.4", "ADM", "Midjourney"}
    for m in test["per_source"].values():
        assert (m["n_real"], m["n_fake"]) == (3, 3)  # each generator's own val folders
    accs = [m["acc"] for m in test["per_source"].values()]
    assert test["mean"]["acc"] == pytest.approx(float(np.mean(accs)))
    # validation rows come from SD v1.4's train folders only (carved by content hash)
    fs = load_features(params_from_dict(raw), manifest, work / "cache" / "features")
    val = select(fs, "val", ["SDv1.4"])
    assert len(val) > 0 and set(select(fs, "val").frame["source"]) <= {"SDv1.4", "ADM",
                                                                        "Midjourney"}
    assert not any("/val/" in p for p in fs.frame.loc[fs.frame["split"] != "test", "path"])


def test_genimage_table_printed_in_paper_shape(genimage_run):
    work, raw, *_ = genimage_run
    table = format_table(json.loads((work / "details" / "metrics.json").read_text())["test"])
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    assert rows[:3] == ["ADM", "Midjourney", "SDv1.4"] and rows[3] == "mean"
    params_file = write_params(work / "params.yaml", raw)
    res = CliRunner().invoke(main, ["evaluate", "--params", str(params_file),
                                    "--manifest", str(work / "cache" / "manifest.parquet"),
                                    "--features", str(work / "cache" / "features"),
                                    "--model", str(work / "models" / "detector"),
                                    "--out", str(work / "m2.json"),
                                    "--plots", str(work / "plots2")])
    assert res.exit_code == 0, res.output
    assert "test (%)" in res.output and "Midjourney" in res.output and "mean" in res.output
    assert (work / "details" / "m2.json").exists()  # the full results go beside --out
    header = next(line for line in res.output.splitlines() if line.startswith("source"))
    assert header.split() == ["source", "n", "acc@0.5", "acc", "real", "fake", "oracle", "AP",
                              "AUC"]
    assert "oracle: best threshold of each row chosen on its own test labels" in res.output


def test_unknown_protocol_source_is_a_clear_error(genimage_run):
    work, raw, *_ = genimage_run
    bad = {**raw, "protocol": {**raw["protocol"], "train_sources": ["sd14"]}}
    params_file = write_params(work / "bad.yaml", bad)
    res = CliRunner().invoke(main, ["train", "--params", str(params_file),
                                    "--manifest", str(work / "cache" / "manifest.parquet"),
                                    "--features", str(work / "cache" / "features"),
                                    "--out", str(work / "models" / "bad"),
                                    "--log", str(work / "bad_log.csv")])
    assert res.exit_code != 0
    assert "sd14" in res.output and "SDv1.4" in res.output


def test_ufd_protocol_train_root_test_root_shared_reals(tmp_path):
    progan = tmp_path / "progan"
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("car", "cat", "chair"):
            _fill(progan / split / cls / "0_real", n, f"{split}{cls}r", False)
            _fill(progan / split / cls / "1_fake", n, f"{split}{cls}f", True)
    ufd = tmp_path / "ufd_test"
    _fill(ufd / "progan" / "car" / "0_real", 3, "pr", False)
    _fill(ufd / "progan" / "car" / "1_fake", 3, "pf", True)
    laion = _fill(ufd / "glide_100_27" / "0_real", 3, "laion", False)
    _fill(ufd / "glide_100_27" / "1_fake", 3, "gf", True)
    (ufd / "ldm_200" / "0_real").mkdir(parents=True)
    for p in laion:  # the same LAION reals in each diffusion folder
        shutil.copy(p, ufd / "ldm_200" / "0_real" / p.name)
    _fill(ufd / "ldm_200" / "1_fake", 3, "lf", True)
    raw = tiny_raw(tmp_path, protocol={"train_sources": ["car", "cat"], "test_sources": []},
                   train={"epochs": 3, "batch_size": 8}, caption={"max_new_tokens": 4})
    raw["data"]["roots"] = [{"path": str(progan), "role": "train"},
                            {"path": str(ufd), "role": "test"}]
    info, metrics, _ = _run(tmp_path / "ws", raw)
    assert info.train_sources == ("car", "cat")
    report = json.loads((tmp_path / "ws" / "cache" / "index_report.json").read_text())
    assert len(report["duplicates"]) == 3 and not report["cross_split_duplicates"]
    per = metrics["test"]["per_source"]
    assert set(per) == {"progan", "glide_100_27", "ldm_200"}
    for m in per.values():
        assert (m["n_real"], m["n_fake"]) == (3, 3)  # ldm_200 keeps its (duplicate) reals
    assert set(metrics["val"]["per_source"]) == {"car", "cat"}
