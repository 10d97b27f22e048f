"""`nsnet predict`: the bundle's chain on image files equals evaluation on the feature cache."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from nsnet.data.manifest import read_manifest
from nsnet.extraction.cached_features import load_features
from nsnet.heads.train_stage import run_train
from nsnet.heads.training_loop import predict_proba
from nsnet.inference.predict import (
    expand_inputs,
    format_results,
    load_chain,
    predict_paths,
    write_results,
)
from nsnet.inference.verdict import verdict
from nsnet.stages.cli import main
from tests.conftest import read_part
from tests.test_serve import serving


def empty_params(tmp_path: Path) -> Path:
    """A params file with no keys: every parameter takes its built-in default."""
    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    return path


@pytest.fixture(scope="module")
def bundle(built_cache, tmp_path_factory) -> Path:
    return train_bundle(built_cache, tmp_path_factory.mktemp("predict") / "model")


def train_bundle(built_cache, out: Path) -> Path:
    """A head trained long enough that its probabilities spread out (the seed's mapper: on 6
    validation rows the default one's best epoch can be an early, flat one; tests/
    test_shortcut.py checks predict = evaluate for every mapper)."""
    params = dataclasses.replace(built_cache.params, train=dataclasses.replace(
        built_cache.params.train, epochs=15, lr=3e-3, device="cpu", mapper="end_to_end"))
    run_train(params, built_cache.manifest, built_cache.features, out, out.parent / "log.csv")
    return out


def test_predict_on_training_images_equals_evaluate_on_cache(built_cache, bundle):
    fs = load_features(built_cache.params, built_cache.manifest, built_cache.features)
    keep = np.zeros(len(fs), bool)
    keep[::3] = True  # every third image: real and all generators, fewer forward passes
    fs = fs.subset(keep)
    chain = load_chain(bundle, device="cpu")
    cached = predict_proba(chain.head, fs.image, fs.text)
    df = predict_paths(chain, fs.frame["path"].tolist(), batch_size=16)
    assert (df["status"] == "ok").all()
    assert df["id"].tolist() == fs.frame["id"].tolist()  # content hash = the manifest's id
    captions = read_part(built_cache.features, built_cache.params, "caption",
                         fs.frame["id"].tolist())["caption"]
    assert df["caption"].tolist() == list(captions)
    np.testing.assert_allclose(df["prob"].to_numpy(), cached, atol=1e-5)
    assert np.ptp(cached) > 1e-3  # the comparison is not between constants
    expected = [verdict(p, chain.threshold, chain.band) for p in cached]
    assert df["label"].tolist() == expected


def test_predict_calls_a_probability_equal_to_the_threshold_real(built_cache, bundle):
    """The benchmarks' rule (UFD's calculate_acc: fake iff prob > threshold), in predict too."""
    chain = load_chain(bundle, device="cpu")
    path = read_manifest(built_cache.manifest, only_ok=True)["path"].iloc[0]
    prob = float(predict_paths(chain, [path])["prob"].iloc[0])
    chain = dataclasses.replace(chain, band=0.0)  # the plain rule, without an uncertain band
    at = dataclasses.replace(chain, threshold=prob)
    assert predict_paths(at, [path])["label"].tolist() == ["real"]
    below = dataclasses.replace(chain, threshold=np.nextafter(prob, -1.0))
    assert predict_paths(below, [path])["label"].tolist() == ["generated"]


def test_unreadable_files_get_a_status_and_outputs_round_trip(built_cache, bundle, tmp_path):
    images = tmp_path / "in" / "nested"
    images.mkdir(parents=True)
    src = [Path(p) for p in read_manifest(built_cache.manifest, only_ok=True)["path"][:2]]
    for p in src:
        shutil.copy(p, images / p.name)
    (images / "text.png").write_text("not an image")
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.txt").write_text("listed inside folders, as unsupported_format")
    from PIL import Image

    Image.new("RGB", (20, 20)).save(images / "tiny.png")
    paths = expand_inputs([tmp_path / "in", str(tmp_path / "nothing-*.png")])
    assert sum(p.suffix == ".txt" for p in paths) == 1
    chain = load_chain(bundle, device="cpu", threshold=0.0)
    df = predict_paths(chain, paths, batch_size=1)
    status = dict(zip(df["path"].map(lambda p: Path(p).name), df["status"], strict=True))
    assert status == {src[0].name: "ok", src[1].name: "ok", "text.png": "not_an_image",
                      "empty.jpg": "empty_file", "tiny.png": "too_small",
                      "nothing-*.png": "missing", "notes.txt": "unsupported_format"}
    ok = df[df["status"] == "ok"]
    assert (ok["label"] == "generated").all()  # threshold 0 overrides the bundle's
    assert df.loc[df["status"] != "ok", "prob"].isna().all()
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = write_results(df, tmp_path / f"res{suffix}")
        back = {".csv": pd.read_csv, ".parquet": pd.read_parquet,
                ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix](out)
        assert back["status"].tolist() == df["status"].tolist()
        np.testing.assert_allclose(back["prob"].to_numpy(float), df["prob"].to_numpy(float))
    with pytest.raises(ValueError, match="csv"):
        write_results(df, tmp_path / "res.xlsx")


def test_cli_prints_a_table_and_writes_jsonl(built_cache, bundle, tmp_path):
    first = read_manifest(built_cache.manifest, only_ok=True)["path"].iloc[0]
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(main, ["predict", first, "--model", str(bundle), "--out", str(out),
                                    "--params", str(empty_params(tmp_path)),
                                    "--set", "compute.device=cpu"])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text().splitlines()[0])
    assert row["status"] == "ok" and 0 <= row["prob"] <= 1 and row["caption"]
    assert Path(first).name in res.output and "1 scored" in res.output
    res = CliRunner().invoke(main, ["predict", first, "--model", str(tmp_path / "nope"),
                                    "--params", str(empty_params(tmp_path))])
    assert res.exit_code == 1 and "not a model bundle" in res.output


def test_table_keeps_its_columns_with_long_paths():
    long = "/data/" + "/".join(["a_rather_long_folder_name"] * 5) + "/photo_0001.jpg"
    df = pd.DataFrame([
        {"path": "x.png", "status": "ok", "prob": 0.9, "label": "generated", "caption": "a cat",
         "error": ""},
        {"path": long, "status": "ok", "prob": 0.1, "label": "real", "caption": "a dog",
         "error": ""},
        {"path": "broken.jpg", "status": "corrupt", "prob": float("nan"), "label": "",
         "caption": "", "error": "truncated"}])
    lines = format_results(df).splitlines()
    at = lines[0].index("caption / status")
    assert [line[at:] for line in lines[1:]] == ["a cat", "a dog", "[corrupt] truncated"]
    assert all(line[at - 2:at] == "  " for line in lines)
    assert "…" in lines[2] and lines[2].split()[2].endswith("/photo_0001.jpg")
    assert max(len(line) for line in lines) < 100


def test_jsonl_has_plain_slashes_and_null_for_no_error(tmp_path):
    df = pd.DataFrame([
        {"path": "data/real/a.png", "status": "ok", "prob": 0.25, "label": "real",
         "caption": "a/b", "id": "1", "width": 64, "height": 64, "error": "",
         "semantic_share": 0.5},
        {"path": "data/x.txt", "status": "unsupported_format", "prob": float("nan"),
         "label": "", "caption": "", "id": "", "width": -1, "height": -1,
         "error": "not an image", "semantic_share": float("nan")}])
    out = write_results(df, tmp_path / "r.jsonl")
    text = out.read_text()
    assert "\\/" not in text and '"data/real/a.png"' in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["error"] is None and rows[1]["error"] == "not an image"
    assert rows[1]["prob"] is None and rows[1]["semantic_share"] is None
    assert rows[0]["prob"] == 0.25 and rows[0]["width"] == 64
    assert rows[1]["width"] is None and rows[1]["label"] is None and rows[1]["id"] is None


def test_predict_exits_non_zero_when_nothing_could_be_scored(bundle, tmp_path):
    params = ["--params", str(empty_params(tmp_path)), "--set", "compute.device=cpu"]
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "missing.png"), "--model",
                                    str(bundle), *params])
    assert res.exit_code == 1, res.output
    assert "missing.png" in res.output and "[missing]" in res.output  # the table still shows
    assert "nothing could be scored: 1 skipped (missing: 1)" in res.output
    assert "Traceback" not in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(main, ["predict", str(empty), "--model", str(bundle), *params])
    assert res.exit_code == 1 and "no files found" in res.output, res.output


def test_unscored_file_has_the_same_empty_fields_in_csv_jsonl_and_the_api(bundle, built_cache,
                                                                          tmp_path):
    """One convention for "no value": an empty CSV cell, JSON null in predict's JSONL and in
    the API's answer, for the same fields (no -1 for the size, no "" for the label)."""
    good = Path(read_manifest(built_cache.manifest, only_ok=True)["path"].iloc[0])
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[:200])  # a truncated download: status corrupt
    params = ["--params", str(empty_params(tmp_path)), "--set", "compute.device=cpu"]
    for suffix in (".csv", ".jsonl"):
        res = CliRunner().invoke(main, ["predict", str(good), str(bad), "--model", str(bundle),
                                        "--out", str(tmp_path / f"r{suffix}"), "--quiet",
                                        *params])
        assert res.exit_code == 0, res.output
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        cells = list(csv.DictReader(f))
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    with serving(load_chain(bundle, device="cpu"), bundle) as srv, srv.client() as c:
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in (good, bad)]
        res = c.post("/v1/detect", files=files)
    assert res.status_code == 200, res.text
    api = [{"path" if k == "name" else "label" if k == "verdict" else k: v
            for k, v in r.items()} for r in res.json()["results"]]
    assert [row["status"] for row in api] == [row["status"] for row in lines] == \
        [row["status"] for row in cells] == ["ok", "corrupt"]
    nothing = [{k for k, v in row.items() if v is None} for row in api]
    assert nothing[1] == {"prob", "label", "caption", "semantic_share", "width", "height"}
    assert nothing[0] == {"error"}  # the advanced head's caption is there
    assert [{k for k, v in row.items() if v is None} for row in lines] == nothing
    assert [{k for k, v in row.items() if v == ""} for row in cells] == nothing
    assert lines[1]["id"] == api[1]["id"] == cells[1]["id"] and lines[1]["error"]
    assert "-1" not in [row[k] for row in cells for k in ("width", "height", "prob")]
