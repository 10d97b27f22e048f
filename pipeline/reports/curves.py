"""The evaluation's curves as PNG pictures, viewable anywhere (no chart library, no network).

``nsnet evaluate`` writes the curves' data as CSV files (ROC, PR, confusion, reliability) and
the training log exists from ``nsnet train``; ``dvc plots show`` draws those CSV plots with a
chart library it loads from a CDN, so offline they stay blank. ``draw_evaluation`` draws the
same data with matplotlib into ``roc.png``, ``pr.png``, ``confusion.png``, ``reliability.png``
and ``train_log.png`` beside them (DVC image plots): labelled axes, one colour per series, and
empty reliability bins left out (a gap), never drawn as 0.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nsnet.reports.style import DPI, OKABE_ITO, save, styled  # noqa: E402

# The figure style's colours (nsnet.reports.style): one per series, colour-blind safe.
RAW, CALIBRATED, CURVE = OKABE_ITO["vermillion"], OKABE_ITO["green"], OKABE_ITO["blue"]
DIAGONAL = "#888888"
NAMES = ("roc", "pr", "confusion", "reliability", "train_log")


def _axes(title: str, xlabel: str, ylabel: str, square: bool = True
          ) -> tuple[plt.Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if square:
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    return fig, ax


def roc_figure(roc: pd.DataFrame) -> plt.Figure:
    auc = float(np.trapezoid(roc["tpr"], roc["fpr"])) if len(roc) > 1 else float("nan")
    fig, ax = _axes("ROC (test)", "false positive rate (reals called generated)",
                    "true positive rate (generated caught)")
    ax.plot([0, 1], [0, 1], ls="--", color=DIAGONAL, lw=1, label="chance")
    ax.plot(roc["fpr"], roc["tpr"], color=CURVE, lw=2, label=f"detector (AUC {auc:.3f})")
    ax.legend(loc="lower right", fontsize=9)
    return fig


def pr_figure(pr: pd.DataFrame, base_rate: float | None) -> plt.Figure:
    fig, ax = _axes("precision-recall (test; generated = positive)", "recall",
                    "precision")
    if base_rate is not None:
        ax.axhline(base_rate, ls="--", color=DIAGONAL, lw=1,
                   label=f"chance (share generated {base_rate:.2f})")
    ax.plot(pr["recall"], pr["precision"], color=CURVE, lw=2, drawstyle="steps-post",
            label="detector")
    ax.legend(loc="lower left", fontsize=9)
    return fig


def confusion_figure(pairs: pd.DataFrame) -> plt.Figure:
    labels = ["real", "fake"]
    counts = np.array([[int(((pairs["actual"] == a) & (pairs["predicted"] == p)).sum())
                        for p in labels] for a in labels])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
    for i in range(2):
        row = max(int(counts[i].sum()), 1)
        for j in range(2):
            dark = counts[i, j] > counts.max() / 2
            ax.text(j, i, f"{counts[i, j]}\n{100 * counts[i, j] / row:.0f}% of row",
                    ha="center", va="center", color="white" if dark else "black", fontsize=10)
    ax.set_xticks([0, 1], [f"called {x}" for x in labels])
    ax.set_yticks([0, 1], [f"is {x}" for x in labels])
    ax.set_xlabel("predicted (at the decision threshold)")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix (test)", fontsize=11)
    return fig


def reliability_figure(bins: pd.DataFrame) -> plt.Figure:
    """Share of generated images per probability bin; empty bins are gaps (NaN), not 0."""
    fig, ax = _axes("reliability (test)", "P(generated), bin centre",
                    "share of generated images in the bin")
    ax.plot([0, 1], [0, 1], ls="--", color=DIAGONAL, lw=1, label="perfectly calibrated")
    for col, n_col, colour, name in (("frac_fake_raw", "n_raw", RAW, "raw"),
                                     ("frac_fake_calibrated", "n_calibrated", CALIBRATED,
                                      "calibrated")):
        if col not in bins:
            continue
        y = bins[col].where(bins[n_col] > 0)  # an empty bin has no share: a gap
        ax.plot(bins["bin_center"], y, marker="o", ms=4, lw=1.5, color=colour,
                label=f"{name} ({int((bins[n_col] > 0).sum())} non-empty bins)")
    ax.legend(loc="upper left", fontsize=9)
    return fig


def train_log_figure(log: pd.DataFrame, best_epoch: int | None = None) -> plt.Figure:
    """Losses and validation metrics per epoch; the epoch the bundle kept is marked."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.6))
    for ax, cols, ylabel in ((left, (("train_loss", RAW), ("val_loss", CALIBRATED)), "loss"),
                             (right, (("val_ap", CURVE), ("val_acc", RAW),
                                      ("val_auc", CALIBRATED)), "validation metric")):
        for col, colour in cols:
            if col in log:
                ax.plot(log["epoch"], log[col], color=colour, lw=1.5, label=col)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if best_epoch is not None:
        for ax in (left, right):
            ax.axvline(best_epoch, color=DIAGONAL, ls=":", lw=1)
        right.plot([], [], color=DIAGONAL, ls=":", label=f"kept: epoch {best_epoch}")
    right.set_ylim(-0.02, 1.02)
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("training", fontsize=11)
    return fig


def draw_evaluation(plots_dir: str | Path, train_log: str | Path | None = None,
                    best_epoch: int | None = None) -> list[Path]:
    """PNGs of the CSV plots in ``plots_dir`` (and of ``train_log``, with the bundle's
    ``best_epoch`` marked); returns those drawn."""
    with styled():
        return _draw(Path(plots_dir), train_log, best_epoch)


def _draw(d: Path, train_log: str | Path | None, best_epoch: int | None) -> list[Path]:
    figures: dict[str, plt.Figure] = {}
    base = None
    if (d / "confusion.csv").exists():
        pairs = pd.read_csv(d / "confusion.csv")
        figures["confusion"] = confusion_figure(pairs)
        base = float((pairs["actual"] == "fake").mean()) if len(pairs) else None
    if (d / "roc.csv").exists():
        figures["roc"] = roc_figure(pd.read_csv(d / "roc.csv"))
    if (d / "pr.csv").exists():
        figures["pr"] = pr_figure(pd.read_csv(d / "pr.csv"), base)
    if (d / "reliability.csv").exists():
        figures["reliability"] = reliability_figure(pd.read_csv(d / "reliability.csv"))
    if train_log is not None and Path(train_log).exists():
        figures["train_log"] = train_log_figure(pd.read_csv(train_log), best_epoch)
    return [save(fig, d / f"{name}.png", DPI) for name, fig in figures.items()]
