"""Robustness curves: every head on the clean test set and on each degraded copy.

Each head of the experiment is trained once per seed on the experiment's training rows (clean
features, as ``nsnet compare``) and scored on the clean test rows and on their copies under
every ``protocol.degradations`` entry (computed by ``nsnet extract`` in the feature store), as
the robustness figures of GenImage and AIGIBench plot them: one line per method against the
degradation's strength. ``nsnet evaluate-degraded`` scores the trained bundle alone; this
compares the heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsnet.config import Params
from nsnet.data.experiment import Experiment
from nsnet.evaluation.degraded_eval_stage import degraded_sets, degraded_table
from nsnet.evaluation.seeds import over_seeds
from nsnet.heads.method import method
from nsnet.heads.train_stage import HeadInputs, fit_over_seeds, head_inputs


def robustness(params: Params, exp: Experiment, manifest: str | Path, features: str | Path,
               heads: tuple[str, ...], bar: Any = None, inputs: HeadInputs | None = None
               ) -> dict[str, Any]:
    """``{"heads", "degradations", "results": {head: {"clean" | name: table}}, "seeds"}``;
    tables are means over the seeds with ``std`` beside them. Each head reads its recipe's
    clean and degraded features."""
    inputs = inputs or head_inputs(params, manifest, features)
    test_sets: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for kind in heads:
        fs, crops = inputs(kind)
        recipe = method(kind).recipe
        if recipe not in test_sets:
            test_sets[recipe] = degraded_sets(params, exp, manifest, features, recipe, fs)
        sets = test_sets[recipe]
        fits = fit_over_seeds(params, exp, kind, fs, crops, bar)
        results[kind] = {name: over_seeds(fits.each(
            lambda fit, test=test: degraded_table(params, exp, fit.model, test, fit.decision)))
            for name, test in sets.items()}
    return {"heads": list(heads), "degradations": list(params.protocol.degradations),
            "results": results, "seeds": list(exp.seeds), "preset": exp.preset_name}
