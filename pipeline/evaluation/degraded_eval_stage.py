"""Metrics of the trained detector on every degraded copy of the test set (GenImage's
robustness table).

For each name in ``protocol.degradations`` the degraded test images' features (computed by
``nsnet extract`` under that treatment, in the same feature store) are scored with the same
detector and threshold as the clean test set; the per-generator tables of all degradations
(plus ``clean``) go to ``metrics/details/degradations.json``, and the mean AP of each
(``<name>_ap``, the numbers `dvc metrics show` lists) to ``metrics/degradations.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.config import Params
from pipeline.evaluation.evaluate_stage import (
    bundle_decision,
    decision_table,
    score,
)
from pipeline.evaluation.protocol_rows import (
    protocol_table,
    protocol_test_set,
    with_duplicate_members,
)
from pipeline.extraction.cached_features import load_features
from pipeline.heads.bundle import load_bundle
from pipeline.heads.decision import Decision
from pipeline.metrics import compact, pct
from pipeline.provenance import base_provenance

SUMMARY_KEYS = ("acc", "real_acc", "fake_acc", "ap")


def degraded_result(params: Params, model: Any, manifest: str | Path, features: str | Path,
                    degradation: str = "", decision: Decision | None = None,
                    recipe: str = "composite") -> dict[str, Any]:
    """Per-source table of the protocol's test rows under ``degradation`` ("" = clean).

    Reals shared between generators come back from the manifest's duplicate rows
    (``pipeline.evaluation.protocol_rows``), exactly as in ``nsnet evaluate``.
    """
    fs = with_duplicate_members(load_features(params, manifest, features, degradation, recipe),
                                manifest)
    test = protocol_test_set(params, fs)
    if not len(test):
        raise ValueError(f"no test rows of protocol.test_sources in {manifest}")
    decision = decision or Decision()
    frame = score(model, test, decision, params.evaluate.view_average)
    table = protocol_table(params, frame, decision.threshold, raw_col="prob_raw")
    # per_format=False: degraded images were re-encoded; the manifest format is the original's
    return decision_table(frame, decision, table, per_format=False)


def run_evaluate_degraded(params: Params, manifest: str | Path, features: str | Path,
                          model_dir: str | Path, metrics_dir: str | Path) -> dict[str, Any]:
    """Score clean + every degraded test set; write the tables and the mean APs."""
    model, config = load_bundle(model_dir)
    decision = bundle_decision(params, config, model_dir)
    metrics_dir = Path(metrics_dir)
    recipe = config.head.recipe
    results = {"clean": degraded_result(params, model, manifest, features, "", decision, recipe)}
    for name in params.protocol.degradations:
        results[name] = degraded_result(params, model, manifest, features, name, decision,
                                        recipe)
    summary = {
        "head": config.head.name, "threshold": decision.threshold,
        "preset": params.protocol.preset,
        "patch_views": params.patches.views, "view_average": params.evaluate.view_average,
        "degradations": results,
        "provenance": base_provenance(),
    }
    write_json(metrics_dir / "details" / "degradations.json", summary)
    compact_means: dict[str, Any] = {}
    for name, res in results.items():
        compact_means.update(compact(res["mean"], ("ap",), f"{name}_"))
    write_json(metrics_dir / "degradations.json", compact_means)
    return results


def format_degraded_table(results: dict[str, dict[str, Any]], title: str = "") -> str:
    """One row per degradation: mean acc / real acc / fake acc / AP over generators (%)."""
    lines = [title] if title else []
    lines.append(f"{'degradation':<14}{'acc':>8}{'real':>8}{'fake':>8}{'AP':>8}")
    for name, res in results.items():
        mean = res.get("mean", {})
        lines.append(f"{name:<14}" + "".join(f"{pct(mean.get(k)):>8}" for k in SUMMARY_KEYS))
    return "\n".join(lines)
