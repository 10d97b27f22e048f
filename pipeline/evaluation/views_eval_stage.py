"""Metrics of the trained detector on every degraded test view (GenImage's robustness table).

For each name in ``protocol.degradations`` the view's cached features
(``pipeline.extraction.views_stage``) are
scored with the same detector and threshold as the clean test set; the per-generator table and
its mean go to ``metrics/views/<name>.json``, a summary of all views (plus ``clean``, read
from the clean features) to ``metrics/details/degradations.json``, and the mean AP of each view
(``<view>_ap``, the numbers `dvc metrics show` lists) to ``metrics/degradations.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.config import Params
from pipeline.evaluation.evaluate_stage import bundle_decision, decision_table, score
from pipeline.evaluation.protocol_rows import (
    protocol_table,
    protocol_test_set,
    with_duplicate_members,
)
from pipeline.extraction.cached_features import load_features
from pipeline.extraction.views_stage import view_paths
from pipeline.heads.bundle import load_bundle
from pipeline.heads.decision import Decision
from pipeline.metrics import compact, pct
from pipeline.provenance import base_provenance

SUMMARY_KEYS = ("acc", "real_acc", "fake_acc", "ap")


def view_result(params: Params, model: Any, manifest: str | Path, embeddings: str | Path,
                main_manifest: str | Path, decision: Decision | None = None) -> dict[str, Any]:
    """Per-source table of the protocol's test rows of one feature file.

    Reals shared between generators come back from ``main_manifest``'s duplicate rows
    (``pipeline.evaluation.protocol_rows``), exactly as in ``nsnet evaluate``.
    """
    fs = with_duplicate_members(load_features(params, manifest, embeddings), main_manifest)
    test = protocol_test_set(params, fs)
    if not len(test):
        raise ValueError(f"no test rows of protocol.test_sources in {embeddings}")
    decision = decision or Decision()
    frame = score(model, test, decision, params.evaluate.view_average)
    table = protocol_table(params, frame, decision.threshold, raw_col="prob_raw")
    # per_format=False: a view's files were re-encoded, their manifest format is the original's
    return decision_table(frame, decision, table, per_format=False)


def run_evaluate_views(params: Params, manifest: str | Path, embeddings: str | Path,
                       model_dir: str | Path, views_dir: str | Path, metrics_dir: str | Path
                       ) -> dict[str, Any]:
    """Score clean + every degraded view; write one JSON per view and the summary."""
    model, config = load_bundle(model_dir)
    decision = bundle_decision(params, config, model_dir)
    metrics_dir = Path(metrics_dir)
    (metrics_dir / "views").mkdir(parents=True, exist_ok=True)  # a DVC output, even if empty
    results = {"clean": view_result(params, model, manifest, embeddings, manifest, decision)}
    for name in params.protocol.degradations:
        paths = view_paths(views_dir, name)
        if not paths.embeddings.exists():
            raise FileNotFoundError(f"{paths.embeddings} not found: run `nsnet degrade` (or "
                                    "`dvc repro views`) after changing protocol.degradations")
        results[name] = view_result(params, model, paths.manifest, paths.embeddings, manifest,
                                    decision)
        write_json(metrics_dir / "views" / f"{name}.json",
                   {"view": name, **results[name], "threshold": decision.threshold,
                    "head": config["head"]["kind"], "provenance": base_provenance()})
    summary = {
        "head": config["head"]["kind"], "threshold": decision.threshold,
        "preset": params.protocol.preset,
        "patch_views": params.patches.views, "view_average": params.evaluate.view_average,
        "views": {name: {"mean": res["mean"], "mean_rows": list(res["per_source"]),
                         "per_source": {s: {k: m[k] for k in SUMMARY_KEYS}
                                        for s, m in res["per_source"].items()}}
                  for name, res in results.items()},
        "provenance": base_provenance(),
    }
    write_json(metrics_dir / "details" / "degradations.json", summary)
    compact_views: dict[str, Any] = {}
    for name, res in results.items():
        compact_views.update(compact(res["mean"], ("ap",), f"{name}_"))
    write_json(metrics_dir / "degradations.json", compact_views)
    return results


def format_views_table(results: dict[str, dict[str, Any]], title: str = "") -> str:
    """One row per view: mean acc / real acc / fake acc / AP over generators (%)."""
    lines = [title] if title else []
    lines.append(f"{'view':<14}{'acc':>8}{'real':>8}{'fake':>8}{'AP':>8}")
    for name, res in results.items():
        mean = res.get("mean", {})
        lines.append(f"{name:<14}" + "".join(f"{pct(mean.get(k)):>8}" for k in SUMMARY_KEYS))
    return "\n".join(lines)
