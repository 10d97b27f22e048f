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
from pathlib import Path
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


TABLE_KEYS = ("acc_05", "acc", "real_acc", "fake_acc", "acc_oracle", "ap", "auc")


def with_decision_accuracies(m: dict[str, Any], y: np.ndarray, prob: np.ndarray,
                             raw: np.ndarray) -> dict[str, Any]:
    """Add ``acc_05`` (raw probability at 0.5) and the oracle best-threshold accuracy."""
    m["acc_05"] = float(np.mean(is_fake(raw, 0.5) == (y == 1))) if len(y) else float("nan")
    m["acc_oracle"], m["oracle_threshold"] = oracle_accuracy(y, prob)
    return m


def per_source_table(frame: pd.DataFrame, prob_col: str = "prob", threshold: float = 0.5,
                     raw_col: str | None = None) -> dict[str, Any]:
    """Metrics per generator and their mean over generators, plus pooled 'overall'.

    ``acc``/``real_acc``/``fake_acc`` use ``prob_col`` at ``threshold`` (the bundle's
    decision); ``acc_05`` is the accuracy of ``raw_col`` (the uncalibrated probability;
    default ``prob_col``) at 0.5, and ``acc_oracle`` the best accuracy any threshold reaches on
    that generator's own rows (an oracle that sees the test labels).
    """
    y, p = frame["label"].to_numpy(), frame[prob_col].to_numpy()
    raw = frame[raw_col or prob_col].to_numpy()

    def metrics(idx: np.ndarray | slice) -> dict[str, Any]:
        return with_decision_accuracies(binary_metrics(y[idx], p[idx], threshold), y[idx],
                                        p[idx], raw[idx])

    per = {s: metrics(idx) for s, idx in eval_groups(frame).items()}
    mean = {k: _nanmean([m[k] for m in per.values()]) for k in TABLE_KEYS} if per else {}
    return {"overall": metrics(slice(None)), "per_source": per, "mean": mean}


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


TABLE_HEADER = ("acc@0.5", "acc", "real", "fake", "oracle", "AP", "AUC")


def format_table(result: dict[str, Any], title: str = "", decision: str = "") -> str:
    """A paper-style table per generator, the mean over generators and the pooled rows.

    Columns: acc@0.5 (uncalibrated probability at 0.5), acc / real / fake at the decision
    threshold (``decision`` describes it in the footnote), oracle (best threshold per row,
    chosen on its own test labels), AP, AUC. With a benchmark preset (``result["rows"]``) the
    rows are the preset's, in its order; a row without data reads ``missing`` and the mean says
    over how many rows it was taken. A result over several seeds (``std`` beside the means,
    ``nsnet.evaluation.seeds``) prints ``mean±std`` in every cell.
    """
    std = result.get("std")
    width = 12 if std is not None else 9
    lines = [title] if title else []
    lines.append(f"{'source':<22}{'n':>7}" + "".join(f"{h:>{width}}" for h in TABLE_HEADER))
    order = result.get("rows") or list(result["per_source"])
    missing = result.get("missing", {})

    def line(name: str, m: dict[str, Any], s: dict[str, Any] | None) -> str:
        sd = s or {}
        cells = "".join(f"{pct_pm(m.get(k), sd.get(k) if std is not None else None):>{width}}"
                        for k in TABLE_KEYS)
        return f"{name:<22}{m.get('n', ''):>7}" + cells

    for name in order:
        if name in missing:
            lines.append(f"{name:<22}{'':>7}  missing: {missing[name]}")
            continue
        lines.append(line(name, result["per_source"][name],
                          ((std or {}).get("per_source") or {}).get(name)))
    lines.append(line(result.get("mean_label", "mean"), {**result["mean"], "n": ""},
                      (std or {}).get("mean")))
    lines.append(line("overall (pooled)", result["overall"], (std or {}).get("overall")))
    if missing:
        lines.append(f"partial mean: {len(order) - len(missing)} of {len(order)} official rows "
                     f"(missing: {', '.join(missing)})")
    if result.get("not_in_preset"):
        lines.append(f"not rows of the preset (not scored): {', '.join(result['not_in_preset'])}")
    lines.append(f"acc@0.5: uncalibrated probability at 0.5; acc/real/fake: at the decision "
                 f"threshold{' ' + decision if decision else ''}; oracle: best threshold of each "
                 "row chosen on its own test labels (not a usable detector)")
    if std is not None:
        lines.append(f"mean±std over {len(result.get('seeds') or ())} seeds (train.seeds; "
                     "sample standard deviation)")
    return "\n".join(lines)


def aligned(rows: list[list[str]], right: tuple[int, ...] = (), gap: int = 2) -> list[str]:
    """Rows of cells as text lines, each column as wide as its widest cell, ``gap`` spaces
    between columns (columns in ``right`` right-aligned), so no two columns ever touch."""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    return [(" " * gap).join(c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                             for i, c in enumerate(r)).rstrip() for r in rows]


def threshold_text(t: float) -> str:
    """A decision threshold as every command prints it: the 4 decimals that metrics.json
    keeps (``rounded``), trailing zeros dropped: 0.191785 -> ``0.1918``, 0.5 -> ``0.5``."""
    return f"{float(t):.4f}".rstrip("0").rstrip(".")


def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def pct_pm(v: float | None, std: float | None = None) -> str:
    """``pct(v)``, followed by ``±std`` (percent) when a standard deviation is given."""
    if std is None or pct(v) == "-":
        return pct(v)
    return f"{pct(v)}±{pct(std)}"


# ----------------------------------------------------------------------------- calibration
ECE_BINS = 15  # Guo et al. 2017


def reliability_bins(y: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Equal-width bins of P(generated): rows, mean probability and share of fakes per bin.

    Binning as scikit-learn's ``calibration_curve(strategy="uniform")``: a probability on an
    inner edge falls in the lower bin. Empty bins are kept with ``n = 0`` and NaN means.
    """
    y = np.asarray(y, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], prob)
    n = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(ids, weights=prob, minlength=n_bins) / n
        frac_fake = np.bincount(ids, weights=y, minlength=n_bins) / n
    return pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "n": n,
                         "mean_prob": mean_prob, "frac_fake": frac_fake})


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (rows in bin / rows) * |share of fakes - mean P(generated)|."""
    if len(y) == 0:
        return float("nan")
    bins = reliability_bins(y, prob, n_bins)
    full = bins[bins["n"] > 0]
    return float(np.sum(full["n"] / len(y) * np.abs(full["frac_fake"] - full["mean_prob"])))


def oracle_accuracy(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """The best accuracy any threshold reaches on these very rows, and that threshold.

    An *oracle*: it looks at the test labels, so it measures separability, not a usable
    detector (several papers print it per generator).
    """
    y = np.asarray(y).astype(np.int64)
    if len(y) == 0:
        return float("nan"), float("nan")
    tps, fps, thr = _curve_counts(y, np.asarray(score, dtype=np.float64))
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    correct = np.r_[n_neg, tps + (n_neg - fps)]  # first: a threshold at the top score
    best = int(np.argmax(correct))
    # is_fake is prob > threshold: flagging every score >= s means a threshold just below s
    best_thr = float(thr[0]) if best == 0 else float(np.nextafter(thr[best - 1], -np.inf))
    return float(correct[best] / len(y)), best_thr


# ----------------------------------------------------------------------------- metrics files
# DVC lists every number of a metrics file as a column of `dvc metrics show` / `dvc exp show`,
# so the declared metrics files hold only the few numbers a person compares between runs; the
# full tables, provenance and id lists go to ``details_path(...)`` (a plain output).

SUMMARY_KEYS = ("acc", "real_acc", "fake_acc", "ap")


def rounded(value: float | None, digits: int = 4) -> float | None:
    """A metric for a metrics file: rounded, ``None`` for NaN (JSON has no NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def compact(mean: dict[str, Any], keys: tuple[str, ...] = SUMMARY_KEYS,
            prefix: str = "", std: dict[str, Any] | None = None) -> dict[str, float | None]:
    """``{prefix + key: rounded value}`` of a mean-over-generators row; with ``std`` (over
    seeds) also ``{prefix + key + "_std": ...}``."""
    out = {f"{prefix}{k}": rounded(mean.get(k)) for k in keys}
    if std is not None:
        out.update({f"{prefix}{k}_std": rounded(std.get(k)) for k in keys})
    return out


def details_path(metrics_file: str | Path) -> Path:
    """Where the full results behind a metrics file go: ``<dir>/details/<name>``."""
    metrics_file = Path(metrics_file)
    return metrics_file.parent / "details" / metrics_file.name
