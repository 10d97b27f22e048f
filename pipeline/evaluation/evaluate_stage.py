"""The ``evaluate`` stage: metrics per split and per source, curves for ``dvc plots``.

``run_evaluate`` is plan -> compute -> write: ``plan_evaluate`` resolves the experiment, loads
the features (with duplicate members) and every seed's bundle and checks them against the
params; ``compute_evaluate`` scores val and test with each seed's head and takes mean ± std
over seeds; ``write_evaluate`` writes the metrics file, the details and the curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsnet.atomic import atomic_path, write_json
from nsnet.config import Params
from nsnet.data.experiment import Experiment, resolve_experiment
from nsnet.evaluation.protocol_rows import (
    protocol_table,
    protocol_test_set,
    protocol_val_set,
    with_duplicate_members,
)
from nsnet.evaluation.seeds import over_seeds, seeds_note, std_of
from nsnet.extraction.cached_features import FeatureSet, load_features
from nsnet.heads.bundle import load_bundle
from nsnet.heads.bundle_config import BundleConfig
from nsnet.heads.decision import Decision
from nsnet.heads.train_stage import seed_dir
from nsnet.heads.training_loop import predict_logits
from nsnet.metrics import (
    binary_metrics,
    compact,
    details_path,
    expected_calibration_error,
    format_table,
    is_fake,
    pct_pm,
    per_source_table,
    pr_curve,
    reliability_bins,
    roc_curve,
    rounded,
    threshold_text,
)
from nsnet.provenance import base_provenance, fingerprint

# The numbers of metrics/metrics.json, the DVC metrics file: few and short, so that
# `dvc exp show --only-changed` fits 120 columns with the parameter that changed in view
# (real_acc, fake_acc and every table are in the details file).
METRIC_KEYS = ("acc", "ap")


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


def evaluate_sets(params: Params, fs: FeatureSet, model: Any, decision: Decision | float,
                  experiment: Experiment | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics on val (training sources, per source) and test (the protocol's table: the
    preset's official rows, or one row per test source) of the experiment (resolved from
    ``params`` and ``fs``'s rows when not given)."""
    if not isinstance(decision, Decision):
        decision = Decision(threshold=float(decision), rule=f"{float(decision):g}")
    exp = experiment or resolve_experiment(params, fs.frame)
    results: dict[str, Any] = {}
    scored = []
    sets = {"val": protocol_val_set(exp, fs), "test": protocol_test_set(exp, fs)}
    for name, subset in sets.items():
        if not len(subset):
            continue
        frame = score(model, subset, decision, params.evaluate.view_average)
        frame["eval_split"] = name
        scored.append(frame)
        table = (protocol_table(exp, frame, decision.threshold, raw_col="prob_raw")
                 if name == "test" else None)
        results[name] = decision_table(frame, decision, table)
    return results, pd.concat(scored, ignore_index=True) if scored else pd.DataFrame()


def bundle_decision(params: Params, config: BundleConfig, model_dir: str | Path) -> Decision:
    """The bundle's decision, after checking it was made with the current evaluate.* params
    and patch-order views."""
    from nsnet.config import parse_threshold

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


@dataclass
class SeedRun:
    """One seed's trained head: its bundle's model, config and decision."""

    seed: int
    model: Any
    config: BundleConfig
    decision: Decision


def load_seed_runs(params: Params, exp: Experiment, model_dir: str | Path) -> list[SeedRun]:
    """The bundle of every seed of the experiment: ``model_dir`` for the first, then
    ``model_dir/seeds/<seed>`` (written by ``nsnet train``), each checked against the params."""
    runs = []
    for i, seed in enumerate(exp.seeds):
        where = Path(model_dir) if i == 0 else seed_dir(model_dir, seed)
        if i and not where.exists():
            raise FileNotFoundError(
                f"{where} not found: train.seeds is {list(exp.seeds)} but {model_dir} holds no "
                f"bundle of seed {seed}; retrain with `nsnet train` (or `dvc repro`)")
        model, config = load_bundle(where)
        if config.training is None:
            raise ValueError(f"{where}: the bundle records no training (config.json has no "
                             "training section); retrain it with `nsnet train`")
        trained = config.training.params.seed
        if trained != seed:
            raise ValueError(f"{where} was trained with seed {trained}, but train.seeds puts "
                             f"seed {seed} there; retrain with `nsnet train` (or `dvc repro`)")
        runs.append(SeedRun(seed, model, config, bundle_decision(params, config, where)))
    return runs


@dataclass
class EvaluationPlan:
    """What ``evaluate`` scores: the experiment, its features and every seed's head."""

    exp: Experiment
    fs: FeatureSet
    runs: list[SeedRun]


def plan_evaluate(params: Params, manifest: str | Path, features: str | Path,
                  model_dir: str | Path) -> EvaluationPlan:
    """Resolve the experiment, load every seed's bundle, then the features of the recipe its
    head reads (the bundle's, whatever ``train.head`` says now)."""
    exp = resolve_experiment(params, manifest)
    runs = load_seed_runs(params, exp, model_dir)
    fs = load_features(params, manifest, features, recipe=runs[0].config.head.recipe)
    return EvaluationPlan(exp, with_duplicate_members(fs, exp), runs)


def compute_evaluate(params: Params, plan: EvaluationPlan
                     ) -> tuple[dict[str, Any], pd.DataFrame]:
    """(the details, the first seed's scored rows): every table is the mean over seeds with
    ``std`` beside it (one seed: as it always was); ``seeds`` holds each seed's tables."""
    per_seed: dict[int, dict[str, Any]] = {}
    scored = pd.DataFrame()
    for i, run in enumerate(plan.runs):
        results, frame = evaluate_sets(params, plan.fs, run.model, run.decision, plan.exp)
        per_seed[run.seed] = {**results, "threshold": run.decision.threshold}
        if i == 0:
            scored = frame
    merged = over_seeds(per_seed)
    first = plan.runs[0]
    preset = plan.exp.preset
    protocol = {"preset": plan.exp.preset_name,
                "title": preset.title if preset else "",
                "reference": preset.reference if preset else "",
                "rows": preset.row_names if preset else [],
                "threshold_rule": "fake if prob > threshold (exactly the threshold is real)"}
    training = first.config.training
    assert training is not None  # load_seed_runs refuses a bundle without one
    out = {**{k: v for k, v in merged.items() if k in ("val", "test", "std", "seeds")},
           "protocol": protocol, "threshold": merged["threshold"],
           "decision": first.decision.to_json(),
           "head": first.config.head.name,
           "patch_views": plan.fs.n_views, "view_average": params.evaluate.view_average,
           "model": {"features": training.features, "best_epoch": training.best_epoch},
           "scored_ids": fingerprint(scored["id"].tolist()) if len(scored) else "",
           "provenance": base_provenance()}
    if len(plan.runs) > 1:
        out["per_seed"] = per_seed
        for split in ("val", "test"):  # each table carries its own spread, as format_table reads
            if split in out:
                out[split] = {**out[split], "std": std_of(merged, split) or {},
                              "seeds": list(per_seed)}
    return out, scored


def write_evaluate(out: dict[str, Any], scored: pd.DataFrame, metrics_json: str | Path,
                   plots_dir: str | Path, details_json: str | Path | None = None) -> None:
    """The details, the compact metrics file (test mean; ``_std`` keys and ``n_seeds`` with
    several seeds) and the curves of the first seed's head (the bundle)."""
    plots_dir = Path(plots_dir)
    test = scored[scored["eval_split"] == "test"] if len(scored) else scored
    if len(test) and out.get("test", {}).get("preset"):  # curves over the preset's rows
        rows = out["test"]["per_source"].values()
        used = {s for m in rows for s in m["sources"]} | {m["real_pool"] for m in rows}
        test = test[test["source"].isin(used)]
    if len(test):
        threshold = out["decision"]["threshold"]
        y, p = test["label"].to_numpy(), test["prob"].to_numpy()
        _csv(plots_dir / "roc.csv", roc_curve(y, p))
        _csv(plots_dir / "pr.csv", pr_curve(y, p))
        pred = pd.DataFrame({"actual": np.where(y == 1, "fake", "real"),
                             "predicted": np.where(is_fake(p, threshold), "fake", "real")})
        _csv(plots_dir / "confusion.csv", pred)
        _csv(plots_dir / "reliability.csv", reliability_frame(y, test["prob_raw"].to_numpy(), p))
    write_json(details_json or details_path(metrics_json), out)
    several = "seeds" in out
    test_table = out.get("test")
    summary = (compact(test_table["mean"], METRIC_KEYS,
                       std=std_of(test_table, "mean") if several else None)
               if test_table else {})
    summary["threshold"] = rounded(out["threshold"])  # chosen on val when it is a rule
    if several:
        summary["threshold_std"] = rounded(std_of(out, "threshold"))
        summary["n_seeds"] = len(out["seeds"])
    write_json(metrics_json, summary)


def run_evaluate(params: Params, manifest: str | Path, features: str | Path,
                 model_dir: str | Path, metrics_json: str | Path, plots_dir: str | Path,
                 details_json: str | Path | None = None) -> dict[str, Any]:
    """Score val and test; write the compact metrics file and the full details beside it.

    ``metrics_json`` (a DVC metrics file) gets the test mean over generators (acc, ap) and the
    decision threshold; ``details_json`` (default ``<dir>/details/<name>``) gets every table, the
    model and provenance. With several ``train.seeds`` every number is the mean over the
    seeds' bundles, with its standard deviation beside it. Returns the details.
    """
    out, scored = compute_evaluate(params, plan_evaluate(params, manifest, features, model_dir))
    write_evaluate(out, scored, metrics_json, plots_dir, details_json or details_path(
        metrics_json))
    return out


def format_evaluation(out: dict[str, Any]) -> str:
    """What ``nsnet evaluate`` prints: per split, the per-generator table, the calibration
    (ECE before -> after) and the accuracy per file format."""
    d = out.get("decision") or {}
    thr = threshold_text(out["threshold"])
    if std_of(out, "threshold") is not None:
        thr = f"{thr} ± {std_of(out, 'threshold'):.2g}"
    desc = (f"{thr} (evaluate.threshold={d.get('rule', out['threshold'])}, "
            f"calibration {d.get('calibration', 'none')})")
    blocks = []
    for split in ("val", "test"):
        if split not in out:
            continue
        res = out[split]
        note = "; ".join(n for n in (views_note(out.get("patch_views", 1),
                                                out.get("view_average", "mean_logit")),
                                     seeds_note(out)) if n)
        lines = [format_table(res, f"\n[{out['head']}] {split} (%"
                              + (f"; {note})" if note else ")"), desc)]
        cal = res.get("calibration")
        if cal:
            sd = std_of(res, "calibration") or {}
            lines.append(f"calibration ({cal['method']}): ECE "
                         f"{pct_pm(cal['ece_raw'], sd.get('ece_raw'))}% raw -> "
                         f"{pct_pm(cal['ece'], sd.get('ece'))}% calibrated (15 equal-width bins)")
        fmts = res.get("per_format") or {}
        if fmts:
            sd = std_of(res, "per_format") or {}
            lines.append("per format: " + "; ".join(
                f"{fmt} n={m['n']} acc {pct_pm(m['acc'], _sd(sd, fmt, 'acc'))} "
                f"(real {pct_pm(m['real_acc'], _sd(sd, fmt, 'real_acc'))}, "
                f"fake {pct_pm(m['fake_acc'], _sd(sd, fmt, 'fake_acc'))})"
                for fmt, m in fmts.items()))
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def _sd(std: dict[str, Any], *path: str) -> Any:
    for key in path:
        std = std.get(key) if isinstance(std, dict) else None
    return std
