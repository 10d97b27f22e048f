"""Our vectorised metrics against scikit-learn's, on fresh random scores with many ties."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from nsnet.metrics import (
    average_precision,
    binary_metrics,
    eval_groups,
    is_fake,
    per_source_table,
    roc_auc,
    roc_curve,
)


def _scores(seed: int, n: int = 400, levels: int | None = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    p = np.clip(0.5 + 0.25 * (2 * y - 1) * rng.random(n) + 0.3 * rng.normal(size=n), 0, 1)
    if levels:  # quantise: many tied scores, including ties across the two classes
        p = np.round(p * (levels - 1)) / (levels - 1)
    return y, p


@pytest.mark.parametrize(("seed", "levels"), [(0, 3), (1, 7), (2, 50), (3, None)])
def test_metrics_match_scikit_learn(seed, levels):
    y, p = _scores(seed, levels=levels)
    m = binary_metrics(y, p, threshold=0.5)
    pred = (p > 0.5).astype(int)  # the benchmarks' rule: exactly 0.5 is real
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["real_acc"] == pytest.approx(skm.recall_score(y, pred, pos_label=0), abs=1e-12)
    assert m["fake_acc"] == pytest.approx(skm.recall_score(y, pred, pos_label=1), abs=1e-12)
    assert m["ap"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert (m["n"], m["n_real"], m["n_fake"]) == (len(y), int((y == 0).sum()), int(y.sum()))


def _ufd_style_acc(y: np.ndarray, p: np.ndarray, thres: float) -> tuple[float, float, float]:
    """Real, fake and overall accuracy the way UniversalFakeDetect's ``validate.py`` counts them
    (``calculate_acc``): predicted fake when the score is strictly above the threshold."""
    real, fake = y == 0, y == 1
    return (skm.accuracy_score(y[real], p[real] > thres),
            skm.accuracy_score(y[fake], p[fake] > thres), skm.accuracy_score(y, p > thres))


def test_threshold_exactly_half_counts_as_real_like_ufd_calculate_acc():
    y = np.array([0, 1, 1, 0, 0])
    p = np.array([0.5, 0.5, 0.9, 0.2, 0.5000001])
    m = binary_metrics(y, p, 0.5)
    assert (m["real_acc"], m["fake_acc"], m["acc"]) == pytest.approx(_ufd_style_acc(y, p, 0.5))
    assert m["real_acc"] == pytest.approx(2 / 3) and m["fake_acc"] == 0.5  # both 0.5s: real
    assert binary_metrics(y, p, 0.6)["acc"] == skm.accuracy_score(y, p > 0.6)
    assert is_fake(np.array([0.5, 0.51]), 0.5).tolist() == [False, True]


def test_all_tied_scores_and_single_class():
    y = np.array([0, 1, 0, 1, 1])
    p = np.full(5, 0.3)
    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p)) == 0.5
    assert average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p))
    assert np.isnan(roc_auc(np.ones(4), np.linspace(0, 1, 4)))
    assert np.isnan(average_precision(np.zeros(4), np.linspace(0, 1, 4)))


def test_roc_curve_matches_scikit_learn():
    y, p = _scores(5, n=200, levels=11)
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    ours = roc_curve(y, p)
    np.testing.assert_allclose(ours["fpr"], fpr)
    np.testing.assert_allclose(ours["tpr"], tpr)
    np.testing.assert_allclose(ours["threshold"][1:], thr[1:])


def test_per_source_uses_own_reals_or_the_shared_real_pool():
    frame = pd.DataFrame({
        "label": [0, 0, 1, 1, 1, 1, 0],
        "source": ["real", "real", "a", "a", "b", "b", "b"],
        "prob": [0.1, 0.7, 0.9, 0.4, 0.8, 0.6, 0.3],
    })
    groups = eval_groups(frame)
    assert groups["a"].tolist() == [0, 1, 2, 3]  # no own reals: the shared pool
    assert groups["b"].tolist() == [4, 5, 6]  # own reals only
    table = per_source_table(frame)
    for src, idx in groups.items():
        sub = frame.iloc[idx]
        assert table["per_source"][src]["ap"] == pytest.approx(
            skm.average_precision_score(sub["label"], sub["prob"]))
    assert table["mean"]["acc"] == pytest.approx(
        np.mean([table["per_source"][s]["acc"] for s in groups]))
