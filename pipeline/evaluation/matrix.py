"""The cross-generator matrix: train on each source in turn, test on every source.

GenImage's train-on-one / test-on-all table, for any tree: for every head and every training
source S (``matrix.train_sources``, [] = every source with generated training images) the head
is trained on S's train rows (plus the train side's real-only sources when S has no reals of
its own, as in a plain real/fake tree) and scored on the experiment's test table (the preset's
official rows, or one row per test source). With several seeds every cell is the mean over
them, with its standard deviation. Only heads are trained; the cached features are read once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nsnet.config import Params, parse_threshold
from nsnet.data.experiment import Experiment, matrix_sources
from nsnet.evaluation.evaluate_stage import evaluate_sets
from nsnet.evaluation.protocol_rows import with_duplicate_members
from nsnet.evaluation.seeds import over_seeds, std_of
from nsnet.extraction.cached_features import FeatureSet
from nsnet.heads.train_stage import HeadInputs, SeedFit, TrainViews, fit_over_seeds

MEAN = "mean"
FALLBACK = "†"  # marks a row whose decision fell back to 0.5 (see ``decision_for``)


def decision_for(params: Params, exp: Experiment, fs: FeatureSet) -> tuple[Params, str]:
    """``params`` unchanged when the training sources' validation rows can fit the
    decision (``evaluate.threshold`` rule, ``evaluate.calibration``); else params deciding
    at 0.5 without calibration, and why. A single generator's validation split of a small
    tree may hold no fakes: that row is then still trained and tested, at the fixed 0.5
    the benchmarks' own code uses, and marked."""
    fixed = parse_threshold(params.evaluate.threshold).kind == "fixed"
    if fixed and params.evaluate.calibration == "none":
        return params, ""
    labels = set(fs.frame.loc[exp.val_mask(fs.frame), "label"].tolist())
    if {0, 1} <= labels:
        return params, ""
    lacking = " and ".join(w for w, y in (("real", 0), ("fake", 1)) if y not in labels)
    evaluate = dataclasses.replace(params.evaluate, threshold=0.5, calibration="none")
    return (dataclasses.replace(params, evaluate=evaluate),
            f"no {lacking} validation images of {', '.join(exp.train_sources or ())}: "
            "decided at 0.5, uncalibrated")


def train_and_test(params: Params, exp: Experiment, kind: str, fs: FeatureSet,
                   scored: FeatureSet, bar: Any = None, train_crops: TrainViews | None = None
                   ) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """(each seed's test table, first seed's training record) of ``kind`` trained on
    ``exp``'s training rows of ``fs`` (its augmented ``train_crops`` for the cropped recipes)
    and scored on ``scored``."""
    params, note = decision_for(params, exp, fs)
    fits = fit_over_seeds(params, exp, kind, fs, train_crops, bar)

    def test_table(fit: SeedFit) -> dict[str, Any]:
        metrics, _ = evaluate_sets(params, scored, fit.model, fit.decision, exp)
        if not metrics.get("test"):
            raise ValueError("the cross-generator matrix needs test rows: the experiment has "
                             "none (protocol.test_sources, data.roots)")
        return metrics["test"]

    return fits.each(test_table), {**fits.first.record(), "decision_note": note}


def columns_of(tables: list[dict[str, Any]]) -> list[str]:
    """Test rows every table scored, in the table's order (the preset's, else by name)."""
    first = tables[0]
    order = first.get("rows") or sorted({r for t in tables for r in t["per_source"]})
    return [r for r in order if all(r in t["per_source"] for t in tables)]


def cross_generator(params: Params, exp: Experiment, inputs: HeadInputs,
                    heads: tuple[str, ...], bar: Any = None) -> dict[str, Any]:
    """Every head trained on every matrix source, each tested on every test row; ``inputs``
    gives each head its recipe's features (``nsnet.heads.train_stage.head_inputs``).

    Returns ``{"heads", "train_sources", "columns", "diagonal", "cells": {head: {source:
    {"test": table, "training": {...}}}}, "seeds"}``; ``diagonal[source]`` names the columns
    that hold the training source itself (seen, not cross-generator).
    """
    sources = matrix_sources(exp, params.matrix.train_sources)
    cells: dict[str, dict[str, Any]] = {}
    for kind in heads:
        fs, crops = inputs(kind)
        scored = with_duplicate_members(fs, exp)
        cells[kind] = {}
        for source in sources:
            sub = exp.with_training([source])
            runs, training = train_and_test(params, sub, kind, fs, scored, bar, crops)
            cells[kind][source] = {"test": over_seeds(runs), "training": {
                k: training[k] for k in ("train_sources", "n_train", "best_epoch",
                                         "best_val_ap", "decision_note")}}
            if len(runs) > 1:
                cells[kind][source]["per_seed"] = runs
    tables = [c["test"] for row in cells.values() for c in row.values()]
    columns = columns_of(tables)
    per = tables[0]["per_source"]
    diagonal = {s: [c for c in columns if s in (per[c].get("sources") or [c])] for s in sources}
    return {"heads": list(heads), "train_sources": sources, "columns": columns,
            "diagonal": diagonal, "cells": cells, "seeds": list(exp.seeds),
            "preset": exp.preset_name, "metric": params.matrix.metric}


def grid(matrix: dict[str, Any], head: str, metric: str, seed: int | None = None
         ) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, std or None) of one head: rows = training sources, columns = test rows, then
    the row mean (the table's mean over its rows). ``seed``: that seed's values alone."""
    rows = matrix["train_sources"]
    cols = matrix["columns"]
    several = len(matrix.get("seeds") or ()) > 1 and seed is None
    values = np.full((len(rows), len(cols) + 1), np.nan)
    std = np.full_like(values, np.nan) if several else None
    for i, src in enumerate(rows):
        cell = matrix["cells"][head][src]
        table = cell["test"] if seed is None else _seed_table(cell, seed)
        for j, col in enumerate([*cols, MEAN]):
            m = table["mean"] if col == MEAN else table["per_source"][col]
            values[i, j] = _num(m.get(metric))
            if std is not None:
                sd = std_of(table, "mean") if col == MEAN else std_of(table, "per_source", col)
                std[i, j] = _num((sd or {}).get(metric))
    return values, std


def _seed_table(cell: dict[str, Any], seed: int) -> dict[str, Any]:
    per = cell.get("per_seed") or {}
    table = per.get(seed, per.get(str(seed)))  # JSON turns the seeds into strings
    if table is None:
        raise KeyError(f"no results of seed {seed} in this matrix cell")
    return table


def unseen_mean(matrix: dict[str, Any], head: str, metric: str, seed: int | None = None
                ) -> float:
    """Mean of ``metric`` over the cells whose test row does not hold the training source
    (cross-generator generalisation); NaN when every cell is seen."""
    values, _ = grid(matrix, head, metric, seed)
    cols = matrix["columns"]
    out = [values[i, j] for i, src in enumerate(matrix["train_sources"])
           for j, col in enumerate(cols) if col not in matrix["diagonal"][src]]
    vals = [v for v in out if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def unseen_summary(matrix: dict[str, Any], head: str, metric: str) -> tuple[float, float | None]:
    """(mean over seeds, sample std over seeds or None for one seed) of ``unseen_mean``."""
    seeds = matrix.get("seeds") or []
    if len(seeds) < 2:
        return unseen_mean(matrix, head, metric), None
    per = np.asarray([unseen_mean(matrix, head, metric, s) for s in seeds])
    per = per[~np.isnan(per)]
    if not len(per):
        return float("nan"), float("nan")
    return float(per.mean()), float(per.std(ddof=1)) if len(per) > 1 else float("nan")


def fallback_rows(matrix: dict[str, Any], head: str) -> dict[str, str]:
    """{training source: why its decision fell back to 0.5} of one head."""
    return {src: cell["training"]["decision_note"] for src, cell in
            matrix["cells"][head].items() if cell["training"].get("decision_note")}
