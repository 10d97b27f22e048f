"""Paper-shaped tables from the metrics files (``nsnet report``): Markdown, LaTeX, CSV.

* Main tables, one per metric (accuracy, AP): rows = methods (each head ``nsnet compare``
  trained, else the evaluated bundle's head; then the published means of the preset's other
  methods, labelled as quoted), columns = the preset's official rows (else one per test
  source) + the mean; ``mean ± std`` where the results hold several seeds.
* The cross-generator matrix of each head (rows = trained on, columns = tested on + mean).
* Robustness: rows = heads, columns = clean + each degradation (accuracy, AP).

Numbers are percentages with one decimal, exactly as printed elsewhere; the output has no
time stamp or path, so the same metrics give the same bytes (it can live in git).

Bold, in every format that has it (Markdown, LaTeX), follows one rule: in a column holding two
numbers or more, every cell whose value *as printed* (one decimal, the std aside) equals the
column's highest printed value is bold. Ties are all bold, ties made by the rounding too, and a
column where every number is the same is bold throughout; a column with a single number has
nothing to compare and stays plain. The matrix is never bold (its rows are not rivals).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsnet.data.presets import Published, published_results
from nsnet.evaluation.matrix import FALLBACK, MEAN, fallback_rows, grid
from nsnet.heads.method import is_training_free

FORMATS = ("markdown", "latex", "csv")
METRICS = {"acc": "accuracy", "ap": "AP"}
DASH = "–"


@dataclass(frozen=True)
class Cell:
    value: float | None = None  # a fraction (0.812), None = not available
    std: float | None = None
    marked: bool = False  # printed in italics (the matrix: the training source's own row)

    @property
    def shown(self) -> str | None:
        """The value as printed (percent, one decimal; no std), None when not available."""
        return None if self.value is None else f"{100 * self.value:.1f}"

    def text(self, latex: bool = False) -> str:
        if self.shown is None:
            return "--" if latex else DASH
        out = self.shown
        if self.std is not None:
            out += f" $\\pm$ {100 * self.std:.1f}" if latex else f" ± {100 * self.std:.1f}"
        return out

    @property
    def key(self) -> float | None:
        """The printed value as a number: cells that print alike compare equal."""
        return None if self.shown is None else float(self.shown)


@dataclass
class Row:
    name: str
    cells: list[Cell]
    quoted: bool = False  # a published number, not measured here


@dataclass
class Table:
    key: str  # acc, ap, matrix-<head>, robustness-acc, ...
    title: str
    corner: str  # the first column's header
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    bold_best: bool = True

    def best(self) -> list[float | None]:
        """Highest printed value of each column, the one every bold cell prints (None: no
        bold in that column: the table is not compared, or the column has under 2 numbers)."""
        out: list[float | None] = []
        for j in range(len(self.columns)):
            keys = [k for r in self.rows if (k := r.cells[j].key) is not None]
            out.append(max(keys) if self.bold_best and len(keys) >= 2 else None)
        return out

    def bold(self) -> list[list[bool]]:
        """Per row, per column: whether the cell is bold (its printed value is the best)."""
        best = self.best()
        return [[b is not None and c.key == b for c, b in zip(r.cells, best, strict=True)]
                for r in self.rows]


# ----------------------------------------------------------------------------- reading
def read_details(path: str | Path | None) -> dict[str, Any] | None:
    """A details JSON file, or None when it does not exist; bad JSON names the file."""
    if path is None or not Path(path).exists():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file written by nsnet ({exc})") from exc


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        return None
    return float(v)


def _cell(table: dict[str, Any], metric: str, row: str | None) -> Cell:
    """``metric`` of one row (None: the mean) of a test table, with its std over seeds."""
    if row is None:
        m, sd = table.get("mean", {}), (table.get("std") or {}).get("mean") or {}
    else:
        m = table.get("per_source", {}).get(row)
        if m is None:
            return Cell()
        sd = ((table.get("std") or {}).get("per_source") or {}).get(row) or {}
    return Cell(_num(m.get(metric)), _num(sd.get(metric)) if table.get("std") else None)


def _columns(table: dict[str, Any]) -> list[str]:
    return [r for r in table.get("rows") or sorted(table["per_source"])]


def _methods(compare: dict[str, Any] | None, evaluate: dict[str, Any] | None
             ) -> tuple[dict[str, dict[str, Any]], str]:
    """{method: test table} and where they come from."""
    if compare and compare.get("heads"):
        order = compare.get("order") or sorted(compare["heads"])
        heads = {h: compare["heads"][h]["test"] for h in order if compare["heads"][h].get("test")}
        if heads:
            return heads, "nsnet compare"
    if evaluate and evaluate.get("test"):
        return {evaluate.get("head", "detector"): evaluate["test"]}, "nsnet evaluate"
    raise FileNotFoundError("no test results to tabulate: run `nsnet compare` or `nsnet "
                            "evaluate` (or `dvc repro`) first, or name the files with "
                            "--compare / --evaluate")


def _preset_of(tables: list[dict[str, Any]]) -> str:
    for t in tables:
        if t.get("preset"):
            return str(t["preset"])
    return "none"


def _quoted_row(p: Published, metric: str, n_cols: int) -> Row:
    value = p.acc if metric == "acc" else p.ap if metric == "ap" else None
    mark = "" if p.same_protocol else " †"
    cells = [Cell() for _ in range(n_cols)] + [Cell(None if value is None else value / 100)]
    return Row(f"{p.title}{mark}", cells, quoted=True)


def main_tables(compare: dict[str, Any] | None, evaluate: dict[str, Any] | None,
                metrics: tuple[str, ...] = ("acc", "ap")) -> list[Table]:
    """One table per metric: our methods, then the preset's published means (quoted)."""
    methods, origin = _methods(compare, evaluate)
    first = next(iter(methods.values()))
    missing = set(first.get("missing") or {})
    columns = [c for c in _columns(first) if c not in missing]
    preset = _preset_of(list(methods.values()))
    quoted = published_results(preset) if preset != "none" else []
    n_seeds = max(len(t.get("seeds") or ()) for t in methods.values()) or 1
    mean_label = first.get("mean_label", "mean")
    free = [h for h in methods if is_training_free(
        ((compare or {}).get("heads", {}).get(h) or {}).get("training") or {})]
    out = []
    for metric in metrics:
        rows = [Row(name, [*(_cell(t, metric, c) for c in columns), _cell(t, metric, None)])
                for name, t in methods.items()]
        rows += [_quoted_row(p, metric, len(columns)) for p in quoted
                 if (p.acc if metric == "acc" else p.ap) is not None]
        notes = [f"Methods trained here ({origin}); {mean_label} = over the test rows."]
        if free:
            notes.append(f"Training-free (fit without a gradient step): {', '.join(free)}.")
        if n_seeds > 1:
            notes.append(f"mean ± sample std over {n_seeds} seeds (train.seeds).")
        if missing:
            notes.append(f"Rows without test images (left out of the mean): "
                         f"{', '.join(sorted(missing))}.")
        if any(r.quoted for r in rows):
            notes.append("Quoted rows: published means, not measured here (pipeline/data/"
                         "presets.py names each source); † = trained or averaged on a "
                         "different protocol than the preset's.")
        out.append(Table(metric, f"Test {METRICS.get(metric, metric)} (%)"
                         + (f" on {preset}" if preset != "none" else ""), "Method",
                         [*columns, mean_label], rows, notes))
    return out


def matrix_tables(matrix: dict[str, Any], metric: str | None = None) -> list[Table]:
    """The cross-generator matrix of every head."""
    metric = metric or matrix.get("metric", "acc")
    cols = matrix["columns"]
    n_seeds = len(matrix.get("seeds") or ()) or 1
    out = []
    for head in matrix["heads"]:
        values, std = grid(matrix, head, metric)
        fallback = fallback_rows(matrix, head)
        rows = []
        for i, src in enumerate(matrix["train_sources"]):
            seen = matrix["diagonal"].get(src, [])
            rows.append(Row(f"{src} {FALLBACK}" if src in fallback else src,
                            [Cell(_num(values[i, j]), None if std is None else _num(std[i, j]),
                                  j < len(cols) and cols[j] in seen)
                             for j in range(len(cols) + 1)]))
        notes = [f"Rows: trained on; columns: tested on; {MEAN} = the row's mean; italic: the "
                 "training source's own test row."]
        if n_seeds > 1:
            notes.append(f"mean ± sample std over {n_seeds} seeds (train.seeds).")
        notes += [f"{FALLBACK} {src}: {why}." for src, why in fallback.items()]
        out.append(Table(f"matrix-{head}", f"Cross-generator matrix, {head}: test "
                         f"{METRICS.get(metric, metric)} (%)", "Trained on", [*cols, MEAN],
                         rows, notes, bold_best=False))
    return out


def robustness_tables(rob: dict[str, Any], metrics: tuple[str, ...] = ("acc", "ap")
                      ) -> list[Table]:
    """Rows = heads, columns = clean + each degradation, per metric."""
    names = ["clean", *rob["degradations"]]
    n_seeds = len(rob.get("seeds") or ()) or 1
    out = []
    for metric in metrics:
        rows = [Row(head, [_cell(rob["results"][head][n], metric, None) for n in names])
                for head in rob["heads"]]
        notes = [f"Mean test {METRICS.get(metric, metric)} (%) over the test rows, on the "
                 "clean test set and under each degradation (protocol.degradations)."]
        if n_seeds > 1:
            notes.append(f"mean ± sample std over {n_seeds} seeds (train.seeds).")
        out.append(Table(f"robustness-{metric}", f"Robustness: test "
                         f"{METRICS.get(metric, metric)} (%) under degradations", "Method",
                         names, rows, notes))
    return out


def collect_tables(compare: dict[str, Any] | None, evaluate: dict[str, Any] | None,
                   matrix: dict[str, Any] | None, rob: dict[str, Any] | None) -> list[Table]:
    """Every table the given results allow, in a fixed order."""
    tables = main_tables(compare, evaluate)
    if matrix:
        tables += matrix_tables(matrix)
    if rob:
        tables += robustness_tables(rob)
    return tables


# ----------------------------------------------------------------------------- rendering
def _bold(text: str, latex: bool) -> str:
    if latex:
        value, _, rest = text.partition(" $\\pm$ ")
        return f"\\textbf{{{value}}}" + (f" $\\pm$ {rest}" if rest else "")
    value, _, rest = text.partition(" ± ")
    return f"**{value}**" + (f" ± {rest}" if rest else "")


def _italic(text: str, latex: bool) -> str:
    return f"\\textit{{{text}}}" if latex else f"*{text}*"


def _cells(row: Row, bold: list[bool], latex: bool) -> list[str]:
    out = []
    for cell, strong in zip(row.cells, bold, strict=True):
        text = cell.text(latex)
        if strong:
            text = _bold(text, latex)
        if cell.marked and cell.value is not None:
            text = _italic(text, latex)
        out.append(text)
    return out


def to_markdown(tables: list[Table]) -> str:
    blocks = []
    for t in tables:
        lines = [f"### {t.title}", "",
                 "| " + " | ".join([t.corner, *t.columns]) + " |",
                 "|" + "|".join([":---", *["---:"] * len(t.columns)]) + "|"]
        for r, bold in zip(t.rows, t.bold(), strict=True):
            name = f"{r.name} (quoted)" if r.quoted else r.name
            lines.append("| " + " | ".join([_md_escape(name), *_cells(r, bold, False)]) + " |")
        lines += ["", *(f"{n}" for n in t.notes)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}", "†": r"$^\dagger$", "±": r"$\pm$", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(tables: list[Table]) -> str:
    """Each table as a ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{
    booktabs}``, and ``graphicx`` for tables wider than 9 columns, scaled to the line)."""
    blocks = ["% nsnet report: paper-shaped tables. Preamble: \\usepackage{booktabs} "
              "\\usepackage{graphicx}"]
    for t in tables:
        wide = len(t.columns) > 8
        spec = "l" + "r" * len(t.columns)
        body = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                " & ".join(latex_escape(c) for c in [t.corner, *t.columns]) + " \\\\",
                "\\midrule"]
        quoted_started = False
        for r, bold in zip(t.rows, t.bold(), strict=True):
            if r.quoted and not quoted_started:
                quoted_started = True
                body += ["\\midrule",
                         f"\\multicolumn{{{len(t.columns) + 1}}}{{l}}{{\\emph{{quoted "
                         "(published, not measured here)}} \\\\"]
            body.append(" & ".join([latex_escape(r.name), *_cells(r, bold, True)]) + " \\\\")
        body += ["\\bottomrule", "\\end{tabular}"]
        if wide:
            body = ["\\resizebox{\\linewidth}{!}{%", *body, "}"]
        caption = latex_escape(" ".join([t.title + ".", *t.notes]))
        blocks.append("\n".join(["\\begin{table}[t]", "\\centering",
                                 f"\\caption{{{caption}}}", f"\\label{{tab:nsnet-{t.key}}}",
                                 "\\smallskip",
                                 *body, "\\end{table}"]))
    return "\n\n".join(blocks) + "\n"


def to_csv(tables: list[Table]) -> str:
    """One block per table (a title row, the header, the rows), blocks apart by an empty
    line; values in percent (2 decimals), a ``<column> std`` column beside each where seeds
    give one."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for k, t in enumerate(tables):
        if k:
            writer.writerow([])
        with_std = any(c.std is not None for r in t.rows for c in r.cells)
        header = [t.corner, "quoted"]
        for col in t.columns:
            header += [col, f"{col} std"] if with_std else [col]
        writer.writerow([t.title])
        writer.writerow(header)
        for r in t.rows:
            line = [r.name, "yes" if r.quoted else "no"]
            for c in r.cells:
                line.append("" if c.value is None else f"{100 * c.value:.2f}")
                if with_std:
                    line.append("" if c.std is None else f"{100 * c.std:.2f}")
            writer.writerow(line)
    return buf.getvalue()


def render(tables: list[Table], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return {"markdown": to_markdown, "latex": to_latex, "csv": to_csv}[fmt](tables)
