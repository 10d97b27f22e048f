"""Decision thresholds and probability calibration: rules, fits and ECE against references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import _sigmoid_calibration, calibration_curve
from sklearn.linear_model import LogisticRegression

from nsnet.config import ParamsError, parse_threshold
from nsnet.heads.bundle_config import BundleDecision, parse_config
from nsnet.heads.decision import (
    Decision,
    DecisionError,
    choose_threshold,
    fit_decision,
    fit_platt,
    fit_temperature,
)
from nsnet.metrics import (
    expected_calibration_error,
    is_fake,
    oracle_accuracy,
    per_source_table,
    reliability_bins,
)


def _overconfident(seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits 3x too large: true P(fake | z) = sigmoid(z / 3)."""
    rng = np.random.default_rng(seed)
    z_true = rng.normal(0, 2, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z_true))).astype(int)
    return y, 3.0 * z_true


# ----------------------------------------------------------------------------- ECE / reliability
def test_reliability_bins_match_scikit_learn_calibration_curve():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.r_[rng.random(490), [0.0, 0.1, 0.2, 0.5, 1.0, 0.3, 0.7, 0.9, 0.6, 0.4]]  # edges too
    for n_bins in (5, 10, 15):
        ours = reliability_bins(y, p, n_bins)
        full = ours[ours["n"] > 0]
        prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
        np.testing.assert_allclose(full["frac_fake"], prob_true, atol=1e-12)
        np.testing.assert_allclose(full["mean_prob"], prob_pred, atol=1e-12)
        assert ours["n"].sum() == len(y)


def test_ece_hand_computed_values():
    # 10 bins. 4 rows in (0.8, 0.9]: mean prob 0.85, 3 of 4 fake -> |0.75 - 0.85| = 0.1;
    # 2 rows in [0, 0.1]: mean prob 0.05, no fake -> 0.05. ECE = 4/6 * 0.1 + 2/6 * 0.05
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.82, 0.84, 0.86, 0.88, 0.05, 0.05])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(
        4 / 6 * 0.1 + 2 / 6 * 0.05)
    # 15 bins (the default): 0.82, 0.84, 0.86 share (0.8, 0.867] (3 fakes, mean 0.84) and 0.88
    # is alone in (0.867, 0.933] (a real) -> 3/6 * 0.16 + 1/6 * 0.88 + 2/6 * 0.05
    assert expected_calibration_error(y, p) == pytest.approx(
        3 / 6 * 0.16 + 1 / 6 * 0.88 + 2 / 6 * 0.05)
    # perfectly calibrated in every bin -> 0; always-wrong certainty -> 1
    assert expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.5])) == 0.0
    assert expected_calibration_error(np.array([0, 1]), np.array([1.0, 0.0])) == 1.0
    # 10 bins: 0.25 x4 (1 fake) and 0.75 x4 (3 fakes) is perfectly calibrated
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.25] * 4 + [0.75] * 4)
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.0)


def test_oracle_accuracy_is_the_best_of_all_thresholds():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(np.clip(0.5 + 0.2 * (2 * y - 1) + 0.3 * rng.normal(size=300), 0, 1), 2)
    brute = max(np.mean((s > t) == (y == 1)) for t in np.r_[-1.0, np.unique(s)])
    acc, thr = oracle_accuracy(y, s)
    assert acc == pytest.approx(brute)
    assert np.mean(is_fake(s, thr) == (y == 1)) == pytest.approx(acc)


# ----------------------------------------------------------------------------- calibration fits
def test_temperature_recovers_a_known_overconfidence():
    y, z = _overconfident(0, 20000)
    assert fit_temperature(z, y) == pytest.approx(3.0, rel=0.05)


def test_platt_matches_scikit_learn_sigmoid_calibration():
    y, z = _overconfident(1, 3000)
    a, b = fit_platt(z, y)
    # scikit-learn's Platt fit (same smoothed targets) returns p = 1 / (1 + exp(A z + B))
    sk_a, sk_b = _sigmoid_calibration(z, y)
    assert a == pytest.approx(-sk_a, abs=2e-4) and b == pytest.approx(-sk_b, abs=2e-4)
    # and plain logistic regression on the logit is close (hard targets, n large)
    lr = LogisticRegression(C=1e9).fit(z[:, None], y)
    assert a == pytest.approx(float(lr.coef_[0, 0]), rel=0.02)


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_lowers_ece_and_keeps_the_ranking(method):
    y, z = _overconfident(2)
    decision, report = fit_decision(0.5, method, z, y)
    assert report["val_ece"] < report["val_ece_raw"] / 2
    assert report["val_ece_raw"] == pytest.approx(
        expected_calibration_error(y, 1 / (1 + np.exp(-z))))
    y2, z2 = _overconfident(7)  # held-out rows: calibration generalises
    raw, cal = 1 / (1 + np.exp(-z2)), decision.prob(z2)
    assert expected_calibration_error(y2, cal) < expected_calibration_error(y2, raw) / 2
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(cal, kind="stable"))


def test_separable_validation_does_not_blow_up_the_temperature():
    z = np.r_[-np.linspace(1, 5, 50), np.linspace(1, 5, 50)]
    y = np.r_[np.zeros(50), np.ones(50)].astype(int)
    t = fit_temperature(z, y)
    assert 0.1 < t < 1.0  # sharper than raw, but not the degenerate T -> 0 of hard labels
    a, b = fit_platt(z, y)
    assert np.isfinite(a) and np.isfinite(b)
    for method in ("temperature", "platt"):
        decision, _ = fit_decision(0.5, method, z, y)
        p = decision.prob(z)
        assert 1e-4 < p.min() and p.max() < 1 - 1e-4  # not the degenerate 0 / 1


# ----------------------------------------------------------------------------- threshold rules
def test_threshold_param_forms():
    assert parse_threshold(0.3).kind == "fixed" and parse_threshold(1).value == 1.0
    assert parse_threshold("val_acc").text == "val_acc"
    rule = parse_threshold("val_fpr:0.01")
    assert (rule.kind, rule.value, rule.text) == ("val_fpr", 0.01, "val_fpr:0.01")
    for bad, msg in ((1.5, "out of range"), ("val_fpr:2", "false-positive rate"),
                     ("best", "neither a number"), ("val_fpr:x", "neither a number")):
        with pytest.raises(ParamsError, match=msg):
            parse_threshold(bad)


def test_val_acc_picks_the_most_accurate_threshold():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    p = np.array([.1, .2, .3, .35, .4, .45, .6, .7, .8, .9])
    t = choose_threshold(parse_threshold("val_acc"), y, p)
    acc = np.mean(is_fake(p, t) == (y == 1))
    brute = max(np.mean((p > c) == (y == 1)) for c in np.r_[-1.0, p])
    assert acc == brute == 0.9
    assert t == pytest.approx(0.525)  # of the two best (0.375, 0.525), the one nearest 0.5
    fixed = choose_threshold(parse_threshold(0.42), y, p)
    assert fixed == 0.42


def test_val_fpr_flags_at_most_that_share_of_reals_and_catches_most_fakes():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 1000)
    p = np.clip(0.5 + 0.15 * (2 * y - 1) + 0.2 * rng.normal(size=1000), 0, 1)
    for x in (0.0, 0.01, 0.1, 0.3):
        t = choose_threshold(parse_threshold(f"val_fpr:{x}"), y, p)
        fpr = np.mean(is_fake(p[y == 0], t))
        assert fpr <= x
        below = np.sort(np.unique(p[p <= t]))  # any lower threshold flags too many reals
        if len(below) > 1:
            assert np.mean(p[y == 0] > below[-2]) > x


def test_val_eer_balances_the_two_error_rates():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 2000)
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(size=2000))))
    t = choose_threshold(parse_threshold("val_eer"), y, p)
    fpr, fnr = np.mean(p[y == 0] > t), np.mean(p[y == 1] <= t)
    assert abs(fpr - fnr) < 0.01


def test_rules_need_both_classes_in_validation():
    with pytest.raises(DecisionError, match="both real and fake"):
        fit_decision("val_acc", "none", np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(DecisionError, match="both real and fake"):
        fit_decision(0.5, "platt", np.array([]), np.array([]))
    decision, _ = fit_decision(0.5, "none", np.array([]), np.array([]))  # a number needs none
    assert decision == Decision(0.5, "0.5", "none", 1.0, 0.0)


def test_threshold_is_chosen_after_calibration():
    y, z = _overconfident(3)
    decision, _ = fit_decision("val_fpr:0.05", "platt", z, y)
    prob = decision.prob(z)
    assert np.mean(is_fake(prob[y == 0], decision.threshold)) <= 0.05
    assert BundleDecision.of(decision, 0.05).as_decision() == decision
    older = {"format_version": 1, "weights_blake2b": "0" * 32,  # bundles before calibration
             "head": {"kind": "composite_probe", "dim": 8}, "threshold": 0.7}
    assert parse_config(older).decision.as_decision() == Decision(0.7, "0.7")


def test_table_reports_acc_at_half_decision_and_oracle():
    import pandas as pd

    frame = pd.DataFrame({"label": [0, 0, 1, 1, 0, 1], "source": ["real"] * 2 + ["g"] * 2
                          + ["real", "g"], "prob": [0.1, 0.6, 0.7, 0.65, 0.2, 0.3],
                          "prob_raw": [0.4, 0.55, 0.45, 0.9, 0.3, 0.2]})
    t = per_source_table(frame, threshold=0.62, raw_col="prob_raw")["overall"]
    assert t["acc_05"] == pytest.approx(3 / 6)  # raw > 0.5: 0.55 (real), 0.9 (fake) flagged
    assert t["acc"] == pytest.approx(5 / 6)  # 0.7, 0.65 flagged; only the fake 0.3 missed
    assert t["acc_oracle"] == pytest.approx(5 / 6)


def test_per_format_breakdown_scores_each_format_separately():
    import pandas as pd

    from nsnet.evaluation.evaluate_stage import format_breakdown

    frame = pd.DataFrame({"label": [0, 0, 1, 1, 0, 1], "format": ["JPEG", "JPEG", "PNG", "PNG",
                                                                  "PNG", ""],
                          "prob": [0.1, 0.2, 0.9, 0.8, 0.7, 0.6]})
    out = format_breakdown(frame, Decision(threshold=0.5))
    assert set(out) == {"JPEG", "PNG", "unknown"}
    assert (out["JPEG"]["n"], out["JPEG"]["acc"], out["JPEG"]["n_fake"]) == (2, 1.0, 0)
    assert out["PNG"]["n"] == 3 and out["PNG"]["acc"] == pytest.approx(2 / 3)
    assert out["PNG"]["real_acc"] == 0.0 and out["PNG"]["fake_acc"] == 1.0
