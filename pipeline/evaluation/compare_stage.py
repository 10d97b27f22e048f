"""Train every head on the same cache and print one comparison table (per source + mean).

With ``views`` (``nsnet compare --views 1,4``) each head is also trained and scored on the first
k patch-order views of the cache for each k: k = 1 is view 0 only (a one-view cache's
features), k > 1 draws one of k views per image per epoch and averages k at test time, so the
table shows what the reference's shuffling is worth on the same data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.config import Params
from pipeline.evaluation.evaluate_stage import evaluate_sets
from pipeline.extraction.cached_features import load_features
from pipeline.heads.decision import Decision
from pipeline.heads.detectors import HEADS
from pipeline.heads.train_stage import epoch_bar, train_head
from pipeline.metrics import compact, details_path, pct
from pipeline.provenance import base_provenance

METRICS = ("acc", "real_acc", "fake_acc", "ap")


def run_compare(params: Params, manifest: str | Path, features: str | Path,
                heads: tuple[str, ...] = tuple(HEADS), out_json: str | Path | None = None,
                views: tuple[int, ...] = (), details_json: str | Path | None = None
                ) -> dict[str, Any]:
    """Train and score each head; with ``views``, once per number of patch-order views
    (columns ``<head> K=<k>``).

    ``out_json`` (a DVC metrics file) gets each column's test AP (mean over generators) as
    ``<head>_ap`` (``<head>_k<k>_ap`` with views); ``details_json`` (default
    ``<dir>/details/<name>``) the full tables. Returns the details.
    """
    full = load_features(params, manifest, features)
    sets = {k: full.first_views(k) for k in views} or {0: full}  # checks k before training
    results: dict[str, Any] = {}
    with epoch_bar(params.train.epochs * len(heads) * len(sets), "compare") as bar:
        for kind in heads:
            for k, fs in sets.items():
                result, config = train_head(params, kind, fs, bar=bar)
                metrics, _ = evaluate_sets(params, fs, result.model,
                                           Decision.from_bundle(config))
                results[f"{kind} K={k}" if k else kind] = {
                    "test": metrics.get("test"), "val": metrics.get("val"),
                    "training": config["training"], "views": fs.n_views}
    out = {"heads": results, "view_average": params.evaluate.view_average,
           "provenance": base_provenance()}
    if out_json:
        write_json(details_json or details_path(out_json), out)
        summary: dict[str, Any] = {}
        for name, res in results.items():
            prefix = name.replace(" K=", "_k") + "_"
            summary.update(compact((res["test"] or {}).get("mean", {}), ("ap",), prefix))
        write_json(out_json, summary)
    return out


def format_comparison(out: dict[str, Any], split: str = "test") -> str:
    """Rows = sources + mean; columns = acc / real / fake / AP for each head."""
    heads = [h for h, r in out["heads"].items() if r.get(split)]
    if not heads:
        return f"(no {split} rows to compare)"
    first = out["heads"][heads[0]][split]
    sources = ([r for r in first["rows"] if r not in first.get("missing", {})]
               if first.get("rows") else
               sorted({s for h in heads for s in out["heads"][h][split]["per_source"]}))
    width = 4 * 7
    head_line = f"{'':<18}" + "".join(f"{h:^{width}}|" for h in heads)
    sub = f"{'source':<18}" + "".join(
        "".join(f"{m.replace('_acc', ''):>7}" for m in METRICS) + "|" for _ in heads)
    lines = [head_line, sub]
    mean_label = first.get("mean_label", "mean")
    for src in [*sources, "mean"]:
        cells = []
        for h in heads:
            tab = out["heads"][h][split]
            m = tab["mean"] if src == "mean" else tab["per_source"].get(src, {})
            cells.append("".join(f"{pct(m.get(k)):>7}" for k in METRICS) + "|")
        lines.append(f"{mean_label if src == 'mean' else src:<18}" + "".join(cells))
    lines.append("")
    lines.append(f"{split} split, %; mean = over sources. Best epoch (val AP): " + ", ".join(
        f"{h} {out['heads'][h]['training']['best_epoch']}" for h in heads) + ".")
    multi = sorted({out["heads"][h].get("views", 1) for h in heads} - {1})
    if multi:
        lines.append(f"K = patch-order views per image: K=1 trains and scores view 0 only; K>1 "
                     f"trains on one random view per image per epoch and scores the "
                     f"{out.get('view_average', 'mean_logit')} of the K views.")
    for h in heads:
        tr = out["heads"][h]["training"]
        if "explained_variance" in tr:
            lines.append(f"{h}: top-{tr['nsnet_k']} caption directions removed, explaining "
                         f"{100 * tr['explained_variance']:.1f}% of the captions' energy.")
    return "\n".join(lines)
