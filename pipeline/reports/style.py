"""One style for every figure of the pipeline (t-SNE, explanation, matrix, robustness, curves).

* Colours: the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), safe for the
  common colour-vision deficiencies; series also differ by marker and line style, so a figure
  still reads in grey-scale print. Real / generated keep the explanation's blue / red (the two
  ends of ColorBrewer's RdBu, also the contribution scale's colours).
* Sequential values (the cross-generator matrix) use ``cividis`` (Nuñez et al. 2018): uniform
  in lightness, so the ordering survives grey-scale printing and colour-vision deficiencies;
  cell text switches between black and white by the cell's lightness.
* Text sizes in points at a fixed DPI, so a PNG shown at 100% has 10-11 px-high letters or
  more; every axis is labelled with its unit; legends go beside the data, never over it.
* The image plots of ``dvc plots show`` (curves, robustness, t-SNE) are at most ``PAGE_PX``
  wide, so its 1400 px page shows every panel: panels go on another row or get narrower.

``styled()`` is a context manager that applies the style to the figures made inside it
(matplotlib's global settings are left alone); ``save`` writes a PNG atomically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nsnet.atomic import atomic_path  # noqa: E402

DPI = 120
PAGE_PX = 1300  # widest PNG: a 1400 px wide `dvc plots show` page holds it beside its margins
OKABE_ITO = {
    "blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73", "orange": "#E69F00",
    "purple": "#CC79A7", "sky": "#56B4E9", "black": "#000000", "yellow": "#F0E442",
}
SERIES_COLOURS = tuple(OKABE_ITO.values())  # heads, in this order
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)),
              (0, (3, 1, 1, 1)))
LABEL_COLOURS = {"real": "#2166ac", "generated": "#b2182b"}  # RdBu's ends: the explanation's
# Sources (t-SNE) never take the label colours' blue and red, so a colour means one thing in
# a figure; the marker changes with the colour, so the legend also reads in grey-scale.
# (Okabe-Ito's sky blue is too near the label blue, its yellow too faint for small markers.)
SOURCE_COLOURS = (OKABE_ITO["orange"], OKABE_ITO["green"], OKABE_ITO["purple"],
                  OKABE_ITO["black"], "#999999")
SEQUENTIAL = "cividis"
DIVERGING = "RdBu_r"  # contributions: red toward generated, blue toward real

RC: dict[str, Any] = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9,
    "figure.titlesize": 12, "axes.grid": False, "grid.alpha": 0.35, "grid.linewidth": 0.6,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.8,
    "lines.markersize": 6, "savefig.dpi": DPI, "figure.dpi": DPI,
    "axes.prop_cycle": matplotlib.cycler(color=list(SERIES_COLOURS)),
}


@contextlib.contextmanager
def styled() -> Iterator[None]:
    """Draw inside this block to get nsnet's figure style."""
    with plt.rc_context(RC):
        yield


def series(i: int) -> dict[str, Any]:
    """Colour, marker and line style of the ``i``-th series (a head): all three change, so
    lines stay apart in grey-scale print."""
    return {"color": SERIES_COLOURS[i % len(SERIES_COLOURS)],
            "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def source_styles(sources: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per source, sorted by name: colours outside the label colours."""
    return {src: (SOURCE_COLOURS[i % len(SOURCE_COLOURS)], MARKERS[i % len(MARKERS)])
            for i, src in enumerate(sorted(set(sources)))}


def text_colour(rgba: tuple[float, ...]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba`` (by luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def legend_beside(fig: plt.Figure, handles: list[Any], labels: list[str], title: str = "",
                  ncol: int | None = None) -> Any:
    """One legend for the whole figure, below the panels (never over data)."""
    return fig.legend(handles, labels, loc="lower center", ncol=ncol or min(len(labels), 4),
                      title=title or None, frameon=False, bbox_to_anchor=(0.5, 0.0))


def save(fig: plt.Figure, out: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG (atomically) and close it."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return out
