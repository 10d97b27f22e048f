"""The ``evaluate`` stage: metrics per split and per source, curves for ``dvc plots``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_path, write_json
from pipeline.config import Params
from pipeline.data.presets import get_preset
from pipeline.evaluation.protocol_rows import (
    protocol_table,
    protocol_test_set,
    protocol_val_set,
    with_duplicate_members,
)
from pipeline.extraction.cached_features import FeatureSet, load_features
from pipeline.heads.bundle import load_bundle
from pipeline.heads.bundle_config import BundleConfig
from pipeline.heads.decision import Decision
from pipeline.heads.training_loop import predict_logits
from pipeline.metrics import (
    binary_metrics,
    compact,
    details_path,
    expected_calibration_error,
    format_table,
    is_fake,
    pct,
    per_source_table,
    pr_curve,
    reliability_bins,
    roc_curve,
    rounded,
)
from pipeline.provenance import base_provenance, fingerprint


def score(model: Any, fs: FeatureSet, decision: Decision | None = None,
          average: str = "mean_logit") -> pd.DataFrame:
    """The frame with ``prob_raw`` (sigmoid of the logit) and ``prob`` (calibrated); K
    patch-order views give one logit per image, combined by ``average``."""
    decision = decision or Decision()
    frame = fs.frame.copy()
    logits = predict_logits(model, fs.image, fs.text, average=average)
    frame["prob_raw"] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    frame["prob"] = decision.prob(logits)
    return frame


def views_note(views: int, average: str) -> str:
    """What a table's probabilities are, e.g. ``4 patch-order views, mean_logit`` ("" for 1)."""
    return f"{views} patch-order views, {average}" if views > 1 else ""


def decision_table(frame: pd.DataFrame, decision: Decision, table: dict[str, Any] | None = None,
                   per_format: bool = True) -> dict[str, Any]:
    """Per-source metrics at the decision threshold (``table``, else one row per source), ECE
    before/after calibration and (with ``per_format``) metrics per file format."""
    if table is None:
        table = per_source_table(frame, threshold=decision.threshold, raw_col="prob_raw")
    y = frame["label"].to_numpy()
    table["calibration"] = {
        "method": decision.calibration,
        "ece_raw": expected_calibration_error(y, frame["prob_raw"].to_numpy()),
        "ece": expected_calibration_error(y, frame["prob"].to_numpy()),
    }
    if per_format and "format" in frame:
        table["per_format"] = format_breakdown(frame, decision)
    return table


def format_breakdown(frame: pd.DataFrame, decision: Decision) -> dict[str, Any]:
    """Metrics per file format of the scored rows (a shortcut check: JPEG vs PNG, ...)."""
    out: dict[str, Any] = {}
    for fmt, rows in frame.groupby(frame["format"].replace("", "unknown"), sort=True):
        out[str(fmt)] = binary_metrics(rows["label"].to_numpy(), rows["prob"].to_numpy(),
                                       decision.threshold)
    return out


def evaluate_sets(params: Params, fs: FeatureSet, model: Any, decision: Decision | float
                  ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics on val (training sources, per source) and test (the protocol's table: the
    preset's official rows, or one row per test source)."""
    if not isinstance(decision, Decision):
        decision = Decision(threshold=float(decision), rule=f"{float(decision):g}")
    results: dict[str, Any] = {}
    scored = []
    sets = {"val": protocol_val_set(params, fs), "test": protocol_test_set(params, fs)}
    for name, subset in sets.items():
        if not len(subset):
            continue
        frame = score(model, subset, decision, params.evaluate.view_average)
        frame["eval_split"] = name
        scored.append(frame)
        table = (protocol_table(params, frame, decision.threshold, raw_col="prob_raw")
                 if name == "test" else None)
        results[name] = decision_table(frame, decision, table)
    return results, pd.concat(scored, ignore_index=True) if scored else pd.DataFrame()


def bundle_decision(params: Params, config: BundleConfig, model_dir: str | Path) -> Decision:
    """The bundle's decision, after checking it was made with the current evaluate.* params
    and patch-order views."""
    from pipeline.config import parse_threshold

    decision = config.decision.as_decision()
    want = (parse_threshold(params.evaluate.threshold).text, params.evaluate.calibration)
    if (decision.rule, decision.calibration) != want:
        raise ValueError(
            f"{model_dir} was trained with evaluate.threshold={decision.rule}, "
            f"evaluate.calibration={decision.calibration}, but the params say "
            f"evaluate.threshold={want[0]}, evaluate.calibration={want[1]}: the threshold and "
            "calibration are fit at training time; retrain with `nsnet train` (or `dvc repro`)"
        )
    trained = config.views.count
    if trained != params.patches.views:
        raise ValueError(
            f"{model_dir} was trained on {trained} patch-order view(s) per image but "
            f"patches.views is {params.patches.views}: set patches.views: {trained}, or retrain "
            "with `nsnet train` (or `dvc repro`)")
    return decision


def reliability_frame(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray) -> pd.DataFrame:
    """The reliability diagram (a DVC plot): share of fakes per probability bin, before and
    after calibration, with the diagonal of a perfectly calibrated detector."""
    before, after = reliability_bins(y, raw), reliability_bins(y, calibrated)
    return pd.DataFrame({
        "bin_center": (before["bin_lo"] + before["bin_hi"]) / 2,
        "perfect": (before["bin_lo"] + before["bin_hi"]) / 2,
        "frac_fake_raw": before["frac_fake"], "n_raw": before["n"],
        "frac_fake_calibrated": after["frac_fake"], "n_calibrated": after["n"],
    })


def _csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def run_evaluate(params: Params, manifest: str | Path, features: str | Path,
                 model_dir: str | Path, metrics_json: str | Path, plots_dir: str | Path,
                 details_json: str | Path | None = None) -> dict[str, Any]:
    """Score val and test; write the compact metrics file and the full details beside it.

    ``metrics_json`` (a DVC metrics file) gets the test mean over generators (acc, real_acc,
    fake_acc, ap); ``details_json`` (default ``<dir>/details/<name>``) gets every table, the
    model and provenance. Returns the details.
    """
    model, config = load_bundle(model_dir)
    if config.training is None:
        raise ValueError(f"{model_dir}: the bundle records no training (config.json has no "
                         "training section); retrain it with `nsnet train`")
    fs = with_duplicate_members(load_features(params, manifest, features,
                                              recipe=config.head.recipe), manifest)
    decision = bundle_decision(params, config, model_dir)
    threshold = decision.threshold
    results, scored = evaluate_sets(params, fs, model, decision)
    plots_dir = Path(plots_dir)
    test = scored[scored["eval_split"] == "test"] if len(scored) else scored
    if len(test) and results.get("test", {}).get("preset"):  # curves over the preset's rows
        rows = results["test"]["per_source"].values()
        used = {s for m in rows for s in m["sources"]} | {m["real_pool"] for m in rows}
        test = test[test["source"].isin(used)]
    if len(test):
        y, p = test["label"].to_numpy(), test["prob"].to_numpy()
        _csv(plots_dir / "roc.csv", roc_curve(y, p))
        _csv(plots_dir / "pr.csv", pr_curve(y, p))
        pred = pd.DataFrame({"actual": np.where(y == 1, "fake", "real"),
                             "predicted": np.where(is_fake(p, threshold), "fake", "real")})
        _csv(plots_dir / "confusion.csv", pred)
        _csv(plots_dir / "reliability.csv", reliability_frame(y, test["prob_raw"].to_numpy(), p))
    preset = get_preset(params.protocol.preset)
    protocol = {"preset": params.protocol.preset,
                "title": preset.title if preset else "",
                "reference": preset.reference if preset else "",
                "rows": preset.row_names if preset else [],
                "threshold_rule": "fake if prob > threshold (exactly the threshold is real)"}
    out = {**results, "protocol": protocol, "threshold": threshold,
           "decision": decision.to_json(),
           "head": config.head.name,
           "patch_views": fs.n_views, "view_average": params.evaluate.view_average,
           "model": {"features": config.training.features,
                     "best_epoch": config.training.best_epoch},
           "scored_ids": fingerprint(scored["id"].tolist()) if len(scored) else "",
           "provenance": base_provenance()}
    write_json(details_json or details_path(metrics_json), out)
    summary = compact(results["test"]["mean"]) if "test" in results else {}
    summary["threshold"] = rounded(decision.threshold)  # chosen on val when it is a rule
    write_json(metrics_json, summary)
    return out


def format_evaluation(out: dict[str, Any]) -> str:
    """What ``nsnet evaluate`` prints: per split, the per-generator table, the calibration
    (ECE before -> after) and the accuracy per file format."""
    d = out.get("decision") or {}
    desc = (f"{out['threshold']:.3g} (evaluate.threshold={d.get('rule', out['threshold'])}, "
            f"calibration {d.get('calibration', 'none')})")
    blocks = []
    for split in ("val", "test"):
        if split not in out:
            continue
        res = out[split]
        note = views_note(out.get("patch_views", 1), out.get("view_average", "mean_logit"))
        lines = [format_table(res, f"\n[{out['head']}] {split} (%"
                              + (f"; {note})" if note else ")"), desc)]
        cal = res.get("calibration")
        if cal:
            lines.append(f"calibration ({cal['method']}): ECE {pct(cal['ece_raw'])}% raw -> "
                         f"{pct(cal['ece'])}% calibrated (15 equal-width bins)")
        fmts = res.get("per_format") or {}
        if fmts:
            lines.append("per format: " + "; ".join(
                f"{fmt} n={m['n']} acc {pct(m['acc'])} (real {pct(m['real_acc'])}, "
                f"fake {pct(m['fake_acc'])})" for fmt, m in fmts.items()))
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
