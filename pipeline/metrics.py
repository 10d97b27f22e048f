"""Detection metrics (real = 0, fake = 1), vectorised numpy, checked against scikit-learn.

Threshold convention: an image is called fake when its probability is strictly *above* the
threshold, so a probability of exactly 0.5 counts as real. That is what the benchmarks' own code
does (UniversalFakeDetect's and CNNDetection's ``calculate_acc``: ``y_pred > thres``), and
``evaluate``, ``predict`` and ``explain`` all use ``is_fake``.

``acc`` at a threshold, ``real_acc`` (true-negative rate), ``fake_acc`` (true-positive rate,
NS-Net's primary metric), ``ap`` (average precision, sklearn's step-wise definition) and
``auc`` (ROC AUC, ties counted half).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def _curve_counts(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True/false positives at every distinct score threshold, highest first."""
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    distinct = np.where(np.diff(s))[0]
    ends = np.r_[distinct, len(yy) - 1]
    tps = np.cumsum(yy)[ends]
    fps = (ends + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64), s[ends]


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y).astype(np.int64)
    if y.sum() == 0:
        return float("nan")
    tps, fps, _ = _curve_counts(y, np.asarray(score, dtype=np.float64))
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y).astype(np.int64)
    if y.min(initial=1) == y.max(initial=0) or len(y) == 0:
        return float("nan")
    tps, fps, _ = _curve_counts(y, np.asarray(score, dtype=np.float64))
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr))


def roc_curve(y: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    tps, fps, thr = _curve_counts(np.asarray(y).astype(np.int64), np.asarray(score, np.float64))
    return pd.DataFrame({"fpr": np.r_[0.0, fps / max(fps[-1], 1)],
                         "tpr": np.r_[0.0, tps / max(tps[-1], 1)],
                         "threshold": np.r_[np.inf, thr]})


def pr_curve(y: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    tps, fps, thr = _curve_counts(np.asarray(y).astype(np.int64), np.asarray(score, np.float64))
    return pd.DataFrame({"recall": tps / max(tps[-1], 1), "precision": tps / (tps + fps),
                         "threshold": thr})


def is_fake(prob: Any, threshold: float = 0.5) -> Any:
    """The decision: fake when ``prob > threshold`` (exactly the threshold counts as real)."""
    return prob > threshold


def binary_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    y = np.asarray(y).astype(np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    pred = is_fake(prob, threshold)
    real, fake = y == 0, y == 1

    def rate(mask: np.ndarray, want: bool) -> float:
        return float(np.mean(pred[mask] == want)) if mask.any() else float("nan")

    return {
        "n": int(len(y)), "n_real": int(real.sum()), "n_fake": int(fake.sum()),
        "acc": float(np.mean(pred == (y == 1))) if len(y) else float("nan"),
        "real_acc": rate(real, False), "fake_acc": rate(fake, True),
        "ap": average_precision(y, prob), "auc": roc_auc(y, prob),
    }


def eval_groups(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows to score per generator: its fakes plus its own reals, or the shared real pool.

    In GenImage/UFD layouts each generator folder has its own reals; in a plain real/fake layout
    the reals of sources that have no fakes form a pool shared by every generator.
    """
    groups: dict[str, np.ndarray] = {}
    label, source = frame["label"].to_numpy(), frame["source"].to_numpy()
    fake_sources = sorted(set(source[label == 1]))
    shared = (label == 0) & ~np.isin(source, fake_sources)
    for s in fake_sources:
        own_real = (label == 0) & (source == s)
        real = own_real if own_real.any() else shared
        groups[s] = np.flatnonzero((source == s) | real)
    return groups


def per_source_table(frame: pd.DataFrame, prob_col: str = "prob", threshold: float = 0.5
                     ) -> dict[str, Any]:
    """Metrics per generator and their mean over generators, plus pooled 'overall'."""
    y, p = frame["label"].to_numpy(), frame[prob_col].to_numpy()
    per = {s: binary_metrics(y[idx], p[idx], threshold) for s, idx in eval_groups(frame).items()}
    keys = ("acc", "real_acc", "fake_acc", "ap", "auc")
    mean = {k: _nanmean([m[k] for m in per.values()]) for k in keys} if per else {}
    return {"overall": binary_metrics(y, p, threshold), "per_source": per, "mean": mean}


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def format_table(result: dict[str, Any], title: str = "") -> str:
    """A paper-style table: acc / real acc / fake acc / AP per generator and the mean.

    With a benchmark preset (``result["rows"]``) the rows are the preset's, in its order; a row
    without data reads ``missing`` and the mean says over how many rows it was taken.
    """
    lines = [title] if title else []
    lines.append(f"{'source':<22}{'n':>7}{'acc':>8}{'real':>8}{'fake':>8}{'AP':>8}{'AUC':>8}")
    keys = ("acc", "real_acc", "fake_acc", "ap", "auc")
    order = result.get("rows") or list(result["per_source"])
    missing = result.get("missing", {})
    for name in order:
        if name in missing:
            lines.append(f"{name:<22}{'':>7}  missing: {missing[name]}")
            continue
        m = result["per_source"][name]
        lines.append(f"{name:<22}{m.get('n', ''):>7}" + "".join(f"{pct(m.get(k)):>8}"
                                                             for k in keys))
    for name, m in ((result.get("mean_label", "mean"), {**result["mean"], "n": ""}),
                    ("overall (pooled)", result["overall"])):
        lines.append(f"{name:<22}{m.get('n', ''):>7}" + "".join(f"{pct(m.get(k)):>8}"
                                                             for k in keys))
    if missing:
        lines.append(f"partial mean: {len(order) - len(missing)} of {len(order)} official rows "
                     f"(missing: {', '.join(missing)})")
    if result.get("not_in_preset"):
        lines.append(f"not rows of the preset (not scored): {', '.join(result['not_in_preset'])}")
    return "\n".join(lines)


def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"
