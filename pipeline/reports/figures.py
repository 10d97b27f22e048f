"""Pictures a person can read: the explanation report and the t-SNE figure (matplotlib, Agg),
in the shared figure style (``nsnet.reports.style``)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from nsnet.metrics import threshold_text  # noqa: E402
from nsnet.reports.style import (  # noqa: E402
    DIVERGING,
    LABEL_COLOURS,
    save,
    source_styles,
    styled,
)

if TYPE_CHECKING:
    import pandas as pd

    from nsnet.reports.explanation import Explanation, PatchReport

CMAP = DIVERGING  # red: pushed toward generated, blue: toward real
VERDICT_COLOURS = {**LABEL_COLOURS, "uncertain": "#555555"}
# The colour scale of contributions never spans less than +-MIN_SCALE logits, so negligible
# contributions stay near white instead of being stretched to full colour (0.25 logits moves
# P = 0.5 by about 0.06).
MIN_SCALE = 0.25


def _norm(values: np.ndarray, floor: float = MIN_SCALE) -> TwoSlopeNorm:
    """Symmetric scale around 0 spanning the largest |value|, but at least ``floor``."""
    vmax = max(float(np.abs(values).max(initial=0.0)), floor)
    return TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)


def patch_locations(ex: Explanation) -> list[tuple[int, int, float, list[int]]]:
    """(row, col, summed contribution, grid indices) per distinct image location.

    An image with fewer patches than the grid repeats them; drawing each copy on top of the
    other would paint one opaque square, so copies are merged into one outline.
    """
    where: dict[tuple[int, int], list[int]] = {}
    for p in ex.patches:
        where.setdefault((p.row, p.col), []).append(p.index)
    by_index = {p.index: p for p in ex.patches}
    return [(r, c, float(sum(by_index[i].contribution for i in idx)), idx)
            for (r, c), idx in where.items()]


def distinct_top(ex: Explanation, k: int, sign: int) -> list[PatchReport]:
    """``ex.top(k, sign)`` without repeats of one image location (small images repeat patches
    to fill the grid; the strip shows each place once)."""
    out: list[PatchReport] = []
    seen: set[tuple[int, int]] = set()
    for p in ex.top(len(ex.patches), sign):
        if (p.row, p.col) not in seen:
            seen.add((p.row, p.col))
            out.append(p)
    return out[:k]


def render_explanation(ex: Explanation, out: str | Path, k: int = 5, dpi: int = 110) -> Path:
    """Image with its patches outlined by contribution, the composite, verdict and top patches."""
    with styled():
        return save(explanation_figure(ex, k), out, dpi)


def explanation_png(ex: Explanation, k: int = 5, dpi: int = 80) -> bytes:
    """The ``render_explanation`` picture as PNG bytes, in memory (nothing touches the disk)."""
    with styled():
        fig = explanation_figure(ex, k)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def explanation_figure(ex: Explanation, k: int = 5) -> plt.Figure:
    """The explanation report as a matplotlib figure (the caller saves and closes it)."""
    s, g = ex.spec.size, ex.spec.grid
    contrib = np.array([p.contribution for p in ex.patches])
    norm, cmap = _norm(contrib), plt.get_cmap(CMAP)
    fig = plt.figure(figsize=(15, 8.2))
    grid = fig.add_gridspec(2, 3, height_ratios=[3.2, 1], width_ratios=[1.25, 1, 1.05],
                            hspace=0.25, wspace=0.12)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(ex.image)
    top = {p.index: rank for rank, p in enumerate(ex.top(k, 1), 1)}
    for row, col, value, idx in sorted(patch_locations(ex), key=lambda t: abs(t[2])):
        colour = cmap(norm(value))
        weight = min(abs(value) / norm.vmax, 1.0)
        ranks = [top[i] for i in idx if i in top]
        ax.add_patch(Rectangle((col, row), s, s, facecolor=(*colour[:3], 0.5 * weight),
                               edgecolor=colour, linewidth=2.4 if ranks else 1.0))
        if ranks:
            ax.text(col + s / 2, row + s / 2, str(min(ranks)), color="white",
                    fontsize=9, fontweight="bold", ha="center", va="center",
                    bbox={"boxstyle": "circle,pad=0.15", "fc": "black", "alpha": 0.7, "lw": 0})
    what = (f"the {len(ex.patches)} selected {s}px patches" if ex.on_patches
            else f"the {ex.head} head's {ex.image.shape[1]}px crop in {s}px tiles")
    ax.set_title(f"{Path(ex.path).name}  ({ex.width}x{ex.height})\n{what}, coloured by "
                 "contribution", fontsize=10)
    ax.axis("off")

    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(ex.composite)
    heat = contrib.reshape(g, g)
    im = ax.imshow(np.kron(heat, np.ones((s, s))), cmap=CMAP, norm=norm, alpha=0.45)
    for i in range(1, g):
        ax.axhline(i * s - 0.5, color="white", lw=0.5)
        ax.axvline(i * s - 0.5, color="white", lw=0.5)
    for p in ex.patches:
        if p.index in top:
            r, c = divmod(p.index, g)
            ax.text(c * s + s / 2, r * s + s / 2, str(top[p.index]), color="white", fontsize=9,
                    fontweight="bold", ha="center", va="center")
    ax.set_title(f"composite the detector sees\n({g}x{g} grid: {ex.spec.n_low} smooth + "
                 f"{ex.spec.n_high} textured patches)" if ex.on_patches else
                 f"crop the detector sees\n({g}x{g} tiles, each occluded in turn)", fontsize=10)
    ax.axis("off")
    bar = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.05, pad=0.03)
    bar.set_ticks([norm.vmin, 0.0, norm.vmax])
    bar.set_ticklabels([f"{norm.vmin:+.2g}", "0", f"{norm.vmax:+.2g}"])
    bar.set_label("contribution (logit drop when occluded):  ← real   |   generated →",
                  fontsize=9)

    ax = fig.add_subplot(grid[0, 2])
    ax.axis("off")
    verdict = ex.label.upper()
    ax.text(0, 1, verdict, fontsize=26, fontweight="bold", va="top",
            color=VERDICT_COLOURS.get(ex.label, "#555555"), transform=ax.transAxes)
    n_low = sum(p.band == "low" for p in ex.top(k, 1))
    lines = [
        f"P(generated) = {ex.prob:.3f}   (threshold {threshold_text(ex.threshold)}"
        + (f" ± {ex.uncertain_band:g})" if ex.uncertain_band else ")"),
        *(["too close to the threshold to call"] if ex.label == "uncertain" else []),
        *(textwrap.wrap("WARNING: " + ex.warning, 44) if ex.warning else []),
        f"head: {ex.head}",
        "",
        *(["caption (BLIP):", *textwrap.wrap(f"“{ex.caption}”", 44), ""] if ex.caption
          else []),
        *([f"semantic part removed from the CLIP feature:\n  ||x - Px|| / ||x|| = "
           f"{100 * ex.semantic_removed:.1f}%", ""] if ex.on_patches
          else [f"the {ex.head} head reads the crop's features as they are", "(it removes no "
                "semantic part)", ""]),
        f"top {len(top)} patches toward generated: {n_low} smooth (low entropy),",
        f"  {len(top) - n_low} textured (high entropy)",
        "",
        "contribution = logit(image) - logit(image with the",
        "  patch replaced by the mean colour)",
    ]
    ax.text(0, 0.84, "\n".join(lines), fontsize=10.5, va="top", family="DejaVu Sans",
            transform=ax.transAxes, linespacing=1.35)

    strip = grid[1, :].subgridspec(1, 2 * k + 1, wspace=0.15)
    groups = [(distinct_top(ex, k, 1), "toward generated", LABEL_COLOURS["generated"], 0),
              (distinct_top(ex, k, -1), "toward real", LABEL_COLOURS["real"], k + 1)]
    for patches, name, colour, start in groups:
        for j in range(k):
            ax = fig.add_subplot(strip[0, start + j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(patches):
                ax.axis("off")
                continue
            p = patches[j]
            ax.imshow(ex.image[p.row:p.row + s, p.col:p.col + s], interpolation="nearest")
            for side in ax.spines.values():  # a full frame in the group's colour
                side.set_visible(True)
                side.set_edgecolor(colour)
                side.set_linewidth(2.5)
            tag = f"#{j + 1} " if start == 0 else ""
            ax.set_title(f"{tag}{p.contribution:+.2g}\n{p.band} H={p.entropy:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, color=colour, fontsize=9)
    return fig


def render_tsne(points: dict[str, np.ndarray], frame: pd.DataFrame, out: str | Path,
                title: str, dpi: int = 110) -> Path:
    """2 x 2 panels: features before/after the projection, coloured by label and by source."""
    with styled():
        fig = _tsne_figure(points, frame, title)
        return save(fig, out, dpi)


def _tsne_figure(points: dict[str, np.ndarray], frame: pd.DataFrame, title: str) -> plt.Figure:
    fig, axes = plt.subplots(2, 2, figsize=(11.5, 9.2))  # 1265 px at 110 dpi (PAGE_PX)
    labels = np.where(frame["label"].to_numpy() == 1, "generated", "real")
    sources = frame["source"].astype(str).to_numpy()
    label_styles = {k: (c, "o") for k, c in LABEL_COLOURS.items()}
    styles_by = {"label": (labels, label_styles),
                 "source": (sources, source_styles(list(sources)))}
    for row, (stage, xy) in enumerate(points.items()):
        for col, what in enumerate(("label", "source")):
            values, styles = styles_by[what]
            ax = axes[row, col]
            for value, (colour, marker) in styles.items():
                m = values == value
                if m.any():
                    ax.scatter(xy[m, 0], xy[m, 1], s=14, alpha=0.75, color=colour,
                               marker=marker, label=f"{value} ({int(m.sum())})", linewidths=0)
            ax.set_title(f"{stage}: coloured by {what}", fontsize=11)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("t-SNE dimension 1 (no unit: only neighbourhoods matter)")
            ax.set_ylabel("t-SNE dimension 2")
            # beside the panel, never over its points
            ax.legend(markerscale=1.8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      frameon=False, title=what)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig
