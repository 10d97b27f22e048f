"""Figures of results, in the shared style (``nsnet.reports.style``): the cross-generator
matrix heatmap, the robustness curves and the test curves (ROC, precision-recall, reliability)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nsnet.config import parse_degradation
from nsnet.evaluation.matrix import FALLBACK, MEAN, fallback_rows, grid
from nsnet.reports.style import (
    DPI,
    OKABE_ITO,
    PAGE_PX,
    SEQUENTIAL,
    legend_beside,
    save,
    series,
    styled,
    text_colour,
)

if TYPE_CHECKING:
    import pandas as pd

METRIC_NAMES = {"acc": "accuracy", "ap": "average precision (AP)", "real_acc": "real accuracy",
                "fake_acc": "fake accuracy", "auc": "ROC AUC"}
PANEL_IN = 4.6  # one panel of plots/curves.png, inches (two across: 9.2 in x 120 dpi = 1104 px)
KIND_AXES = {  # degradation kind -> x-axis label (with its unit) and strength order
    "jpeg": ("JPEG quality (lower = stronger)", True),
    "resize": ("resized to side (px; lower = stronger)", True),
    "blur": ("Gaussian blur σ (px; higher = stronger)", False),
}


def _seeds_text(n: int) -> str:
    return f"; mean ± std over {n} seeds" if n > 1 else ""


def render_matrix(matrix: dict[str, Any], out: str | Path, metric: str = "acc") -> Path:
    """One heatmap per head: rows = trained on, columns = tested on, then the row mean; the
    value (%) in every cell, cells of the training source itself outlined."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    heads, rows, cols = matrix["heads"], matrix["train_sources"], matrix["columns"]
    n_seeds = len(matrix.get("seeds") or ()) or 1
    labels = [*cols, MEAN]
    width = max(5.5, 0.85 * len(labels) + 3.0)
    height_one = 0.55 * len(rows) + 1.6
    with styled():
        fig, axes = plt.subplots(len(heads), 1, figsize=(width, height_one * len(heads)),
                                 squeeze=False, layout="constrained")
        cmap = plt.get_cmap(SEQUENTIAL)
        image = None
        notes: dict[str, str] = {}
        for ax, head in zip(axes[:, 0], heads, strict=True):
            values, std = grid(matrix, head, metric)
            fallback = fallback_rows(matrix, head)
            notes.update(fallback)
            image = ax.imshow(100 * values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
            for i in range(len(rows)):
                for j in range(len(labels)):
                    v = values[i, j]
                    text = "–" if np.isnan(v) else f"{100 * v:.1f}"
                    if std is not None and not np.isnan(std[i, j]):
                        text += f"\n±{100 * std[i, j]:.1f}"
                    colour = "black" if np.isnan(v) else text_colour(cmap(v))
                    ax.text(j, i, text, ha="center", va="center", color=colour,
                            fontsize=9 if std is None else 8,
                            fontweight="bold" if j == len(cols) else "normal")
            for i, src in enumerate(rows):
                for col in matrix["diagonal"].get(src, []):
                    j = cols.index(col)
                    for lw, colour in ((3.2, "white"), (1.4, "black")):
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                               edgecolor=colour, linewidth=lw))
            ax.axvline(len(cols) - 0.5, color="white", linewidth=4)
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 5 else 0,
                          ha="right" if len(labels) > 5 else "center")
            ax.set_yticks(range(len(rows)), [f"{r} {FALLBACK}" if r in fallback else r
                                             for r in rows])
            if head == heads[-1]:
                ax.set_xlabel("tested on (test rows; mean = the row's mean)")
            ax.set_ylabel("trained on")
            ax.set_title(f"{head}", loc="left", fontweight="bold")
            for side in ax.spines.values():
                side.set_visible(False)
        name = METRIC_NAMES.get(metric, metric)
        bar = fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.04, pad=0.02,
                           shrink=min(1.0, 6.0 / (height_one * len(heads))))
        bar.set_label(f"{name} (%)")
        fig.suptitle(f"Cross-generator matrix: test {name} (%){_seeds_text(n_seeds)}\n"
                     "outlined: the training source's own test row", x=0.02, ha="left")
        if notes:
            fig.supxlabel("\n".join(f"{FALLBACK} {src}: {why}" for src, why in
                                    sorted(notes.items())), x=0.02, ha="left", fontsize=9)
        return save(fig, out)


def _strength_order(names: list[str], kind: str) -> list[str]:
    weaker_high = KIND_AXES[kind][1]
    values = {n: parse_degradation(n).value for n in names}
    return sorted(names, key=lambda n: -values[n] if weaker_high else values[n])


def render_robustness(rob: dict[str, Any], out: str | Path) -> Path:
    """Accuracy and AP (%) against each degradation kind's strength, one line per head, the
    clean test set as the first point of every panel (error bars: std over seeds)."""
    import matplotlib.pyplot as plt

    heads, names = rob["heads"], rob["degradations"]
    kinds = [k for k in KIND_AXES if any(parse_degradation(n).kind == k for n in names)]
    n_seeds = len(rob.get("seeds") or ()) or 1
    panels = kinds or ["clean"]
    with styled():
        width = min(4.2 * len(panels) + 0.6, 0.98 * PAGE_PX / DPI)  # 3 kinds: 3.4 in each
        fig, axes = plt.subplots(2, len(panels), figsize=(width, 7.4), squeeze=False,
                                 sharey="row")
        handles: list[Any] = []
        lows = {"acc": 100.0, "ap": 100.0}
        dodge = 0.05 * (np.arange(len(heads)) - (len(heads) - 1) / 2)  # coinciding lines
        for c, kind in enumerate(panels):
            order = ["clean", *(_strength_order([n for n in names if
                                                 parse_degradation(n).kind == kind], kind)
                                if kind != "clean" else [])]
            ticks = ["clean", *(_tick(n) for n in order[1:])]
            for r, metric in enumerate(("acc", "ap")):
                ax = axes[r, c]
                for i, head in enumerate(heads):
                    res = rob["results"][head]
                    y = np.array([_mean(res[n], metric) for n in order])
                    err = np.array([_std(res[n], metric) for n in order])
                    style = series(i)
                    lows[metric] = float(np.nanmin([lows[metric], *(100 * (y - np.nan_to_num(
                        err)))]))
                    line = ax.errorbar(np.arange(len(order)) + dodge[i], 100 * y,
                                       yerr=None if n_seeds == 1 else 100 * err, capsize=3,
                                       label=head, **style)
                    if c == 0 and r == 0:
                        handles.append(line)
                if metric == "acc":
                    ax.axhline(50, color=OKABE_ITO["black"], linewidth=0.8, linestyle=":",
                               zorder=0)
                ax.set_xticks(range(len(order)), ticks)
                ax.set_xlim(-0.3, len(order) - 0.7)
                ax.grid(True, axis="y")
                if c == 0:
                    ax.set_ylabel(f"{METRIC_NAMES[metric]} (%)")
                if r == 1:
                    ax.set_xlabel(KIND_AXES[kind][0] if kind in KIND_AXES else
                                  "protocol.degradations is empty: clean test set only")
                if r == 0:
                    ax.set_title(kind if kind != "clean" else "clean")
        for r, metric in enumerate(("acc", "ap")):
            lo = lows[metric] if np.isfinite(lows[metric]) else 0.0
            axes[r, 0].set_ylim(max(0.0, min(10 * np.floor((lo - 5) / 10), 90.0)), 101)
        legend_beside(fig, handles, heads, title="head (dotted: 50% accuracy, chance)")
        fig.suptitle(f"Robustness: mean over test rows under each degradation"
                     f"{_seeds_text(n_seeds)}", x=0.02, ha="left")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return save(fig, out)


def _tick(name: str) -> str:
    d = parse_degradation(name)
    return f"{d.value:g}"


def _mean(table: dict[str, Any], metric: str) -> float:
    v = table.get("mean", {}).get(metric)
    return float("nan") if v is None else float(v)


def _std(table: dict[str, Any], metric: str) -> float:
    v = ((table.get("std") or {}).get("mean") or {}).get(metric)
    return float("nan") if v is None else float(v)


def render_curves(roc: pd.DataFrame, pr: pd.DataFrame, reliability: pd.DataFrame | None,
                  out: str | Path, title: str = "") -> Path:
    """ROC and precision-recall of the evaluated detector's test scores side by side, and (when
    given) reliability centred below them: two panels across, so the PNG stays within
    ``PAGE_PX`` (a ``dvc plots show`` page) at the style's DPI."""
    import matplotlib.pyplot as plt

    with styled():
        rows = 2 if reliability is not None else 1
        fig = plt.figure(figsize=(2 * PANEL_IN, PANEL_IN * rows + 0.4 * (rows - 1)))
        grid_ = fig.add_gridspec(rows, 4)
        axes = [fig.add_subplot(grid_[0, 0:2]), fig.add_subplot(grid_[0, 2:4])]
        if reliability is not None:
            axes.append(fig.add_subplot(grid_[1, 1:3]))
        ax = axes[0]
        ax.plot(roc["fpr"], roc["tpr"], **series(0), markevery=max(len(roc) // 12, 1),
                label="detector")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set(xlabel="false-positive rate (share of real images flagged)",
               ylabel="true-positive rate (share of fakes caught)", title="ROC",
               xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
        ax = axes[1]
        ax.plot(pr["recall"], pr["precision"], **series(0), markevery=max(len(pr) // 12, 1),
                label="detector", drawstyle="steps-post")
        ax.set(xlabel="recall (share of fakes caught)",
               ylabel="precision (share of flagged that are fake)", title="precision-recall",
               xlim=(-0.01, 1.01), ylim=(0.0, 1.01))
        if reliability is not None:
            ax = axes[2]
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1,
                    label="perfectly calibrated")
            for i, (col, name) in enumerate((("frac_fake_raw", "raw"),
                                             ("frac_fake_calibrated", "calibrated"))):
                ax.plot(reliability["bin_center"], reliability[col], **series(i), label=name)
            ax.set(xlabel="predicted P(generated) (bin centre)",
                   ylabel="share of generated images in the bin", title="reliability",
                   xlim=(0, 1), ylim=(-0.01, 1.01))
        for ax in axes:
            ax.grid(True)
            handles, labels = ax.get_legend_handles_labels()  # below the panel, off the data
            ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      ncol=len(labels), frameon=False)
        if title:
            fig.suptitle(title, x=0.02, ha="left")
        fig.tight_layout()
        return save(fig, out)
