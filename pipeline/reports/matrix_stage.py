"""The ``matrix`` stage: the cross-generator matrix, its metrics file and its heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nsnet.atomic import write_json
from nsnet.config import Params
from nsnet.data.experiment import matrix_sources, resolve_experiment
from nsnet.evaluation.matrix import (
    FALLBACK,
    MEAN,
    cross_generator,
    fallback_rows,
    grid,
    unseen_summary,
)
from nsnet.heads.train_stage import epoch_bar, epochs_of, head_inputs
from nsnet.metrics import details_path, pct_pm, rounded
from nsnet.provenance import base_provenance
from nsnet.reports.result_figures import render_matrix


def run_matrix(params: Params, manifest: str | Path, features: str | Path,
               out_json: str | Path, png: str | Path, details_json: str | Path | None = None,
               heads: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Train every head on every matrix source, test on every test row; write the metrics
    file (per head: the mean AP over the unseen cells, ``<head>_ap``), the full tables
    (``details_json``, default ``<dir>/details/<name>``) and the heatmap of ``matrix.metric``."""
    exp = resolve_experiment(params, manifest, *([heads] if heads else []))
    inputs = head_inputs(params, manifest, features)
    for head in exp.heads:  # every recipe's features load (or fail) before any training
        inputs(head)
    n = len(matrix_sources(exp, params.matrix.train_sources))
    epochs = sum(epochs_of(params, head) for head in exp.heads)
    with epoch_bar(epochs * n * exp.n_seeds, "matrix") as bar:
        matrix = cross_generator(params, exp, inputs, exp.heads, bar)
    matrix["provenance"] = base_provenance()
    write_json(details_json or details_path(out_json), matrix)
    write_json(out_json, matrix_summary(matrix))
    render_matrix(matrix, png, params.matrix.metric)
    return matrix


SUMMARY_METRIC = "ap"  # threshold-free; the column names compare.json uses (<head>_ap)


def matrix_summary(matrix: dict[str, Any]) -> dict[str, Any]:
    """The compact numbers: each head's mean AP over the cross-generator cells (trained on one
    source, tested on another) as ``<head>_ap`` (the names, so the columns, of compare.json:
    `dvc metrics show` stays narrow), ``_std`` and ``n_seeds`` with several seeds."""
    out: dict[str, Any] = {}
    for head in matrix["heads"]:
        mean, std = unseen_summary(matrix, head, SUMMARY_METRIC)
        out[f"{head}_{SUMMARY_METRIC}"] = rounded(mean)
        if std is not None:
            out[f"{head}_{SUMMARY_METRIC}_std"] = rounded(std)
    if len(matrix.get("seeds") or ()) > 1:
        out["n_seeds"] = len(matrix["seeds"])
    return out


def format_matrix(matrix: dict[str, Any], metric: str | None = None) -> str:
    """Per head: rows = trained on, columns = tested on + row mean, cells in % (``mean±std``
    over seeds); ``*`` marks a cell of the training source itself."""
    metric = metric or matrix["metric"]
    cols = matrix["columns"]
    several = len(matrix.get("seeds") or ()) > 1
    width = max(12 if several else 8, *(len(c) + 2 for c in [*cols, MEAN]))
    name_w = max(12, *(len(s) + 4 for s in matrix["train_sources"]))
    blocks = []
    for head in matrix["heads"]:
        values, std = grid(matrix, head, metric)
        fallback = fallback_rows(matrix, head)
        lines = [f"[{head}] test {metric} (%): rows = trained on, columns = tested on",
                 f"{'trained on':<{name_w}}" + "".join(f"{c:>{width}}" for c in [*cols, MEAN])]
        for i, src in enumerate(matrix["train_sources"]):
            cells = []
            for j, col in enumerate([*cols, MEAN]):
                sd = None if std is None or np.isnan(std[i, j]) else float(std[i, j])
                text = pct_pm(None if np.isnan(values[i, j]) else float(values[i, j]), sd)
                seen = col in matrix["diagonal"].get(src, [])
                cells.append(f"{text + ('*' if seen else ''):>{width}}")
            name = f"{src} {FALLBACK}" if src in fallback else src
            lines.append(f"{name:<{name_w}}" + "".join(cells))
        mean, sd = unseen_summary(matrix, head, metric)
        lines.append(f"unseen mean (cells without *): {pct_pm(mean, sd)}")
        lines += [f"{FALLBACK} {src}: {why}" for src, why in fallback.items()]
        blocks.append("\n".join(lines))
    note = ("\n* the training source's own test row. mean = the row's mean over its test rows."
            + (f" mean±std over {len(matrix['seeds'])} seeds (train.seeds)." if several else ""))
    return "\n\n".join(blocks) + note
