"""Metrics of the trained detector on every degraded copy of the test set (GenImage's
robustness table).

For each name in ``protocol.degradations`` the degraded test images' features (computed by
``nsnet extract`` under that treatment, in the same feature store) are scored with the same
detector and threshold as the clean test set; the per-generator tables of all degradations
(plus ``clean``) go to ``metrics/details/degradations.json``, and the mean AP over the
degradations (``degraded_ap``, the number `dvc metrics show` lists) to
``metrics/degradations.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nsnet.atomic import write_json
from nsnet.config import Params
from nsnet.data.experiment import Experiment, resolve_experiment
from nsnet.evaluation.evaluate_stage import (
    decision_table,
    load_seed_runs,
    score,
)
from nsnet.evaluation.protocol_rows import (
    protocol_table,
    protocol_test_set,
    with_duplicate_members,
)
from nsnet.evaluation.seeds import over_seeds, std_of
from nsnet.extraction.cached_features import FeatureSet, load_features
from nsnet.heads.decision import Decision
from nsnet.metrics import pct_pm, rounded
from nsnet.provenance import base_provenance

SUMMARY_KEYS = ("acc", "real_acc", "fake_acc", "ap")
CLEAN = "clean"


def degraded_test_set(params: Params, exp: Experiment, manifest: str | Path,
                      features: str | Path, degradation: str = "",
                      recipe: str = "composite", loaded: FeatureSet | None = None) -> FeatureSet:
    """The experiment's test rows under ``degradation`` ("" = clean), with the duplicate
    members that give shared reals back to every generator, exactly as in ``nsnet evaluate``
    (``loaded``: those features when the caller has read them already)."""
    fs = with_duplicate_members(
        loaded or load_features(params, manifest, features, degradation, recipe), exp)
    test = protocol_test_set(exp, fs)
    if not len(test):
        raise ValueError(f"no test rows of protocol.test_sources in {manifest}")
    return test


def degraded_sets(params: Params, exp: Experiment, manifest: str | Path,
                  features: str | Path, recipe: str = "composite",
                  clean: FeatureSet | None = None) -> dict[str, FeatureSet]:
    """``clean`` and every ``protocol.degradations`` entry: its test rows' features (of the
    head's ``recipe``; ``clean``: its clean features, when read already)."""
    names = {CLEAN: "", **{d: d for d in params.protocol.degradations}}
    return {name: degraded_test_set(params, exp, manifest, features, d, recipe,
                                    None if d else clean)
            for name, d in names.items()}


def degraded_table(params: Params, exp: Experiment, model: Any, test: FeatureSet,
                   decision: Decision) -> dict[str, Any]:
    """The protocol's test table of ``model`` on one (clean or degraded) test set."""
    frame = score(model, test, decision, params.evaluate.view_average)
    table = protocol_table(exp, frame, decision.threshold, raw_col="prob_raw")
    # per_format=False: degraded images were re-encoded; the manifest format is the original's
    return decision_table(frame, decision, table, per_format=False)


def degraded_result(params: Params, model: Any, manifest: str | Path, features: str | Path,
                    degradation: str = "", decision: Decision | None = None,
                    experiment: Experiment | None = None,
                    recipe: str = "composite") -> dict[str, Any]:
    """Per-source table of the protocol's test rows under ``degradation`` ("" = clean)."""
    exp = experiment or resolve_experiment(params, manifest)
    test = degraded_test_set(params, exp, manifest, features, degradation, recipe)
    return degraded_table(params, exp, model, test, decision or Decision())


def run_evaluate_degraded(params: Params, manifest: str | Path, features: str | Path,
                          model_dir: str | Path, metrics_dir: str | Path) -> dict[str, Any]:
    """Score clean + every degraded test set with every seed's bundle; write the tables (mean
    ± std over seeds when there are several) and the mean APs."""
    exp = resolve_experiment(params, manifest)
    runs = load_seed_runs(params, exp, model_dir)
    sets = degraded_sets(params, exp, manifest, features, runs[0].config.head.recipe)
    per_seed = {name: {run.seed: degraded_table(params, exp, run.model, test, run.decision)
                       for run in runs} for name, test in sets.items()}
    results = {name: over_seeds(tables) for name, tables in per_seed.items()}
    first = runs[0]
    summary = {
        "head": first.config.head.name, "threshold": first.decision.threshold,
        "preset": exp.preset_name,
        "patch_views": params.patches.views, "view_average": params.evaluate.view_average,
        "degradations": results,
        "provenance": base_provenance(),
    }
    if len(runs) > 1:
        summary["seeds"] = list(exp.seeds)
    metrics_dir = Path(metrics_dir)
    write_json(metrics_dir / "details" / "degradations.json", summary)
    write_json(metrics_dir / "degradations.json", compact_ap(per_seed, results))
    return results


def compact_ap(per_seed: dict[str, dict[int, dict[str, Any]]],
               results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``degradations.json``: ``degraded_ap``; with several seeds also its sample std over the
    seeds (each seed's own ``degraded_ap``) and ``n_seeds``, as the other metrics files."""
    out: dict[str, Any] = {"degraded_ap": degraded_ap(results)}
    seeds = list(next(iter(per_seed.values())))
    if len(seeds) > 1:
        aps = [degraded_ap({name: tables[seed] for name, tables in per_seed.items()})
               for seed in seeds]
        aps = [a for a in aps if a is not None]
        out["degraded_ap_std"] = rounded(float(np.std(aps, ddof=1))) if len(aps) > 1 else None
        out["n_seeds"] = len(seeds)
    return out


def degraded_ap(results: dict[str, dict[str, Any]]) -> float | None:
    """The one DVC metric of the robustness test: the mean over the degradations (not
    ``clean``) of each one's mean AP over generators; None without degradations. One short
    column keeps `dvc exp show --only-changed` within 120 columns; each degradation's AP is in
    ``details/degradations.json``."""
    aps = [res["mean"].get("ap") for name, res in results.items() if name != "clean"]
    aps = [a for a in aps if a is not None and a == a]
    return rounded(sum(aps) / len(aps)) if aps else None


def format_degraded_table(results: dict[str, dict[str, Any]], title: str = "") -> str:
    """One row per degradation: mean acc / real acc / fake acc / AP over generators (%),
    ``mean±std`` over seeds when the results carry a spread."""
    several = any("std" in r for r in results.values())
    width = 13 if several else 8
    lines = [title] if title else []
    lines.append(f"{'degradation':<14}" + "".join(f"{h:>{width}}" for h in
                                                  ("acc", "real", "fake", "AP")))
    for name, res in results.items():
        mean, std = res.get("mean", {}), std_of(res, "mean") or {}
        lines.append(f"{name:<14}" + "".join(
            f"{pct_pm(mean.get(k), std.get(k) if several else None):>{width}}"
            for k in SUMMARY_KEYS))
    return "\n".join(lines)
