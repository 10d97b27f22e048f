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
from pipeline.heads.training_loop import predict_proba
from pipeline.metrics import is_fake, per_source_table, pr_curve, roc_curve
from pipeline.provenance import base_provenance, fingerprint


def score(model: Any, fs: FeatureSet) -> pd.DataFrame:
    frame = fs.frame.copy()
    frame["prob"] = predict_proba(model, fs.image, fs.text)
    return frame


def evaluate_sets(params: Params, fs: FeatureSet, model: Any, threshold: float
                  ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics on val (training sources, per source) and test (the protocol's table: the
    preset's official rows, or one row per test source)."""
    results: dict[str, Any] = {}
    scored = []
    sets = {"val": protocol_val_set(params, fs), "test": protocol_test_set(params, fs)}
    for name, subset in sets.items():
        if not len(subset):
            continue
        frame = score(model, subset)
        frame["eval_split"] = name
        scored.append(frame)
        results[name] = (protocol_table(params, frame, threshold) if name == "test" else
                         per_source_table(frame, threshold=threshold))
    return results, pd.concat(scored, ignore_index=True) if scored else pd.DataFrame()


def _csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def run_evaluate(params: Params, manifest: str | Path, embeddings: str | Path,
                 model_dir: str | Path, metrics_json: str | Path, plots_dir: str | Path
                 ) -> dict[str, Any]:
    fs = with_duplicate_members(load_features(params, manifest, embeddings), manifest)
    model, config = load_bundle(model_dir)
    threshold = params.evaluate.threshold
    results, scored = evaluate_sets(params, fs, model, threshold)
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
    preset = get_preset(params.protocol.preset)
    protocol = {"preset": params.protocol.preset,
                "title": preset.title if preset else "",
                "reference": preset.reference if preset else "",
                "rows": preset.row_names if preset else [],
                "threshold_rule": "fake if prob > threshold (exactly the threshold is real)"}
    out = {**results, "protocol": protocol, "threshold": threshold,
           "head": config["head"]["kind"],
           "model": {"features": config["training"]["features"],
                     "best_epoch": config["training"]["best_epoch"]},
           "scored_ids": fingerprint(scored["id"].tolist()) if len(scored) else "",
           "provenance": base_provenance()}
    write_json(metrics_json, out)
    return out
