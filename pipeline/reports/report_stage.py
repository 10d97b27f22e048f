"""The ``report`` stage: the paper's tables from the metrics files, and the test curves drawn
in the shared figure style."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsnet.atomic import atomic_path
from nsnet.reports.tables import collect_tables, read_details, render

DEFAULT_DETAILS = {
    "compare": "metrics/details/compare.json",
    "evaluate": "metrics/details/metrics.json",
    "matrix": "metrics/details/matrix.json",
    "robustness": "metrics/details/robustness.json",
}


SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".csv": "csv"}


def format_of(path: str | Path) -> str:
    """The report format a file name asks for, by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"--out {path}: name a .md, .tex or .csv file (the suffix picks the "
                         "format)")
    return SUFFIXES[suffix]


def run_report(fmt: str, files: dict[str, str | Path | None], out: str | Path | None = None
               ) -> str:
    """The tables of every results file that exists (``files``: compare, evaluate, matrix,
    robustness -> path) in ``fmt``; written to ``out`` when given, and returned."""
    found = {k: read_details(v) for k, v in files.items()}
    tables = collect_tables(found.get("compare"), found.get("evaluate"), found.get("matrix"),
                            found.get("robustness"))
    text = render(tables, fmt)
    if out:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    return text


def draw_curves(plots_dir: str | Path, out: str | Path | None = None,
                evaluate: str | Path | None = DEFAULT_DETAILS["evaluate"]) -> Path:
    """``plots/curves.png``: ROC, precision-recall and reliability from the CSVs that
    ``nsnet evaluate`` writes in ``plots_dir``."""
    import pandas as pd

    from nsnet.reports.result_figures import render_curves

    plots_dir = Path(plots_dir)
    need = [plots_dir / "roc.csv", plots_dir / "pr.csv"]
    for path in need:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `nsnet evaluate` (or `dvc repro`) "
                                    "first")
    rel = plots_dir / "reliability.csv"
    details: dict[str, Any] = read_details(evaluate) or {}
    title = ""
    if details:
        title = (f"{details.get('head', '')}: test curves (threshold "
                 f"{details.get('decision', {}).get('threshold', 0.5):.3g}, calibration "
                 f"{details.get('decision', {}).get('calibration', 'none')})")
    return render_curves(pd.read_csv(need[0]), pd.read_csv(need[1]),
                         pd.read_csv(rel) if rel.exists() else None,
                         out or plots_dir / "curves.png", title)
