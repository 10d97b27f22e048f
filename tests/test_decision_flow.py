"""The bundle's decision end to end: chosen on validation by `train`, stored in the bundle,
used unchanged by `evaluate`, `predict` and `explain`; ECE, reliability plot, per-format table."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from nsnet.config import parse_threshold
from nsnet.evaluation.evaluate_stage import run_evaluate
from nsnet.extraction.cached_features import load_features, select
from nsnet.heads.bundle import load_bundle
from nsnet.heads.decision import choose_threshold
from nsnet.heads.train_stage import run_train
from nsnet.heads.training_loop import predict_logits
from nsnet.inference.explain import explain_image
from nsnet.inference.predict import load_chain, predict_paths
from nsnet.inference.verdict import verdict
from nsnet.metrics import expected_calibration_error
from nsnet.stages.cli import main
from tests.conftest import tiny_raw, write_params


def _params(built_cache, threshold, calibration):
    p = built_cache.params
    return dataclasses.replace(
        p, train=dataclasses.replace(p.train, epochs=8, lr=3e-3, device="cpu"),
        evaluate=dataclasses.replace(p.evaluate, threshold=threshold, calibration=calibration))


@pytest.fixture(scope="module")
def platt_run(built_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("decision")
    params = _params(built_cache, "val_acc", "platt")
    run_train(params, built_cache.manifest, built_cache.features, work / "model",
              work / "log.csv")
    out = run_evaluate(params, built_cache.manifest, built_cache.features, work / "model",
                       work / "metrics.json", work / "plots")
    return params, work, out


def test_train_chooses_threshold_and_calibration_on_validation(built_cache, platt_run):
    params, work, _ = platt_run
    head, config = load_bundle(work / "model")
    d = config.decision.as_decision()
    assert (d.rule, d.calibration) == ("val_acc", "platt")
    assert config.decision.threshold == d.threshold and d.scale != 1.0
    fs = load_features(params, built_cache.manifest, built_cache.features)
    val = select(fs, "val")
    y = val.frame["label"].to_numpy()
    prob = d.prob(predict_logits(head, val.image, val.text))
    assert d.threshold == pytest.approx(choose_threshold(parse_threshold("val_acc"), y, prob))
    assert config.decision.val_ece == pytest.approx(expected_calibration_error(y, prob))
    assert config.decision.n_val == len(y)


def test_evaluate_uses_the_bundle_decision_and_reports_calibration(platt_run):
    _, work, out = platt_run
    assert out["threshold"] == out["decision"]["threshold"]
    test = out["test"]
    cal = test["calibration"]
    assert cal["method"] == "platt" and 0 <= cal["ece"] <= 1 and 0 <= cal["ece_raw"] <= 1
    for m in (*test["per_source"].values(), test["mean"], test["overall"]):
        assert {"acc_05", "acc", "acc_oracle"} <= set(m)
        assert m["acc_oracle"] >= m["acc"] - 1e-12 and m["acc_oracle"] >= m["acc_05"] - 1e-12
    assert set(test["per_format"]) == {"PNG"} and test["per_format"]["PNG"]["n"] == \
        test["overall"]["n"]
    rel = pd.read_csv(work / "plots" / "reliability.csv")
    assert list(rel.columns) == ["bin_center", "perfect", "frac_fake_raw", "n_raw",
                                 "frac_fake_calibrated", "n_calibrated"]
    assert rel["n_raw"].sum() == rel["n_calibrated"].sum() == test["overall"]["n"]
    saved = json.loads((work / "details" / "metrics.json").read_text())  # the full results
    assert saved["decision"]["calibration"] == "platt"


def test_evaluate_refuses_params_that_disagree_with_the_bundle(built_cache, platt_run, tmp_path):
    params, work, _ = platt_run
    other = dataclasses.replace(params, evaluate=dataclasses.replace(
        params.evaluate, calibration="temperature"))
    with pytest.raises(ValueError, match="was trained with evaluate.threshold=val_acc, "
                                         "evaluate.calibration=platt"):
        run_evaluate(other, built_cache.manifest, built_cache.features, work / "model",
                     tmp_path / "m.json", tmp_path / "plots")


def test_predict_and_explain_give_evaluates_calibrated_probability(built_cache, platt_run):
    params, work, _ = platt_run
    fs = load_features(params, built_cache.manifest, built_cache.features)
    chain = load_chain(work / "model", device="cpu")
    assert chain.threshold == chain.decision.threshold and chain.decision.calibration == "platt"
    rows = fs.frame.iloc[[0, len(fs) // 2, len(fs) - 1]]
    head, config = load_bundle(work / "model")
    sub = fs.subset(fs.frame.index.isin(rows.index))
    expected = config.decision.as_decision().prob(predict_logits(head, sub.image, sub.text))
    df = predict_paths(chain, rows["path"].tolist())
    np.testing.assert_allclose(df["prob"].to_numpy(), expected, atol=1e-5)
    assert df["label"].tolist() == [verdict(p, chain.threshold, chain.band) for p in expected]
    ex = explain_image(chain, rows["path"].iloc[0])
    assert ex.prob == pytest.approx(expected[0], abs=1e-5) and ex.threshold == chain.threshold
    from nsnet.inference.detector import Detector  # the Python API and `nsnet serve`

    det = Detector.load(work / "model", device="cpu")
    got = det.predict(rows["path"].tolist())["prob"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cli_evaluate_prints_the_calibrated_table(built_cache, platt_run, tmp_path):
    _, work, _ = platt_run
    raw = tiny_raw(built_cache.params.data.roots[0].path,
                   evaluate={"threshold": "val_acc", "calibration": "platt"})
    params_file = write_params(tmp_path / "params.yaml", raw)
    res = CliRunner().invoke(main, [
        "evaluate", "--params", str(params_file), "--manifest", str(built_cache.manifest),
        "--features", str(built_cache.features), "--model", str(work / "model"),
        "--out", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert "(evaluate.threshold=val_acc, calibration platt)" in res.output
    assert "calibration (platt): ECE" in res.output and "calibrated" in res.output
    assert "per format: PNG" in res.output


def test_bad_threshold_rule_is_one_clear_message(tmp_path):
    raw = tiny_raw("data", evaluate={"threshold": "val_fpr:1.5"})
    params_file = write_params(tmp_path / "params.yaml", raw)
    res = CliRunner().invoke(main, ["train", "--params", str(params_file)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "evaluate.threshold" in res.output and "false-positive rate" in res.output


def test_val_rule_without_fakes_in_validation_is_one_clear_message(built_cache):
    from nsnet.extraction.cached_features import FeatureSet
    from nsnet.heads.decision import DecisionError
    from nsnet.heads.train_stage import train_head

    params = _params(built_cache, "val_eer", "none")
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=1))
    fs = load_features(params, built_cache.manifest, built_cache.features)
    frame = fs.frame.copy()
    frame.loc[(frame["split"] == "val") & (frame["label"] == 1), "split"] = "test"
    no_val_fakes = FeatureSet(frame, fs.image, fs.text, fs.provenance)
    with pytest.raises(DecisionError, match="evaluate.threshold=val_eer needs validation rows "
                                            "of both real and fake images"):
        train_head(params, "composite_probe", no_val_fakes)
    fixed = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate,
                                                                     threshold=0.5))
    # a number needs no validation labels
    _, config = train_head(fixed, "composite_probe", no_val_fakes)
    assert config.decision.threshold == 0.5
