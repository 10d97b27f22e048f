"""Train every head on the same cache and print one comparison table (per source + mean).

Each head reads its own recipe of features from the one store (``pipeline.config.HEAD_RECIPES``:
the NS-Net family the patch composites and captions, UniversalFakeDetect the center-cropped
image's embedding, RINE the class tokens of every block, Cozzolino et al. a second backbone),
so every column is its method as its paper runs it. Under ``protocol.preset`` the published
numbers of each method on that benchmark stand beside ours (``paper``).

With ``views`` (``nsnet compare --views 1,4``) each head is also trained and scored on the first
k patch-order views of the cache for each k: k = 1 is view 0 only (a one-view cache's
features), k > 1 draws one of k views per image per epoch and averages k at test time, so the
table shows what the reference's shuffling is worth on the same data.

With several ``train.seeds`` every head is trained once per seed (same cached features) and
every number is the mean over the seeds, with its standard deviation beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.config import HEAD_RECIPES, Params
from pipeline.data.experiment import Experiment, resolve_experiment, with_seed
from pipeline.data.presets import published_results
from pipeline.evaluation.evaluate_stage import evaluate_sets
from pipeline.evaluation.protocol_rows import with_duplicate_members
from pipeline.evaluation.seeds import over_seeds, seeds_note, std_of
from pipeline.extraction.cached_features import FeatureSet
from pipeline.heads.train_stage import (
    TrainViews,
    epoch_bar,
    epochs_of,
    head_inputs,
    train_head,
)
from pipeline.metrics import compact, details_path, pct, pct_pm
from pipeline.provenance import base_provenance

METRICS = ("acc", "real_acc", "fake_acc", "ap")
# Our head -> the method name of the presets' published tables (pipeline.data.presets).
PAPER_METHOD = {"univfd": "univfd", "rine": "rine", "cozzolino": "cozzolino", "nsnet": "nsnet"}


def run_compare(params: Params, manifest: str | Path, features: str | Path,
                heads: tuple[str, ...] | None = None, out_json: str | Path | None = None,
                views: tuple[int, ...] = (), details_json: str | Path | None = None
                ) -> dict[str, Any]:
    """Train and score each head (default ``compare.heads``) on its recipe; with ``views``, the
    composite-recipe heads once per number of patch-order views (columns ``<head> K=<k>``).

    ``out_json`` (a DVC metrics file) gets each column's test AP (mean over generators) as
    ``<head>_ap`` (``<head>_k<k>_ap`` with views); ``details_json`` (default
    ``<dir>/details/<name>``) the full tables. Returns the details.
    """
    heads = tuple(params.compare.heads) if heads is None else heads
    exp = resolve_experiment(params, manifest, heads)
    inputs = head_inputs(params, manifest, features)
    columns: list[tuple[str, str, FeatureSet, TrainViews | None]] = []  # name, head, fs, crops
    for kind in heads:
        fs, train_crops = inputs(kind)
        if HEAD_RECIPES[kind] == "composite" and views:  # checks k before training
            columns += [(f"{kind} K={k}", kind, fs.first_views(k), None) for k in views]
        else:
            columns.append((kind, kind, fs, train_crops))
    results: dict[str, Any] = {}
    epochs = sum(epochs_of(params, kind) for _, kind, _, _ in columns) * exp.n_seeds
    with epoch_bar(epochs, "compare") as bar:
        for name, kind, fs, train_crops in columns:
            results[name] = head_over_seeds(params, exp, kind, fs, bar, train_crops)
    out = {"heads": results, "order": list(results),  # the files sort keys; tables keep this
           "view_average": params.evaluate.view_average,
           "preset": params.protocol.preset,
           "published": published_columns(params.protocol.preset, [k for _, k, _, _ in columns]),
           "provenance": base_provenance()}
    if exp.n_seeds > 1:
        out["seeds"] = list(exp.seeds)
    if out_json:
        write_json(details_json or details_path(out_json), out)
        summary: dict[str, Any] = {}
        for name, res in results.items():
            prefix = name.replace(" K=", "_k") + "_"
            test = res["test"] or {}
            summary.update(compact(test.get("mean", {}), ("ap",), prefix,
                                   std=std_of(test, "mean") if exp.n_seeds > 1 else None))
        if exp.n_seeds > 1:
            summary["n_seeds"] = exp.n_seeds
        write_json(out_json, summary)
    return out


def head_over_seeds(params: Params, exp: Experiment, kind: str, fs: FeatureSet,
                    bar: Any = None, train_crops: TrainViews | None = None) -> dict[str, Any]:
    """Train ``kind`` once per seed on the experiment's training rows and score val and test
    (duplicate members included, as ``nsnet evaluate``); tables are means over the seeds with
    ``std`` beside them, ``training`` is the first seed's record (with every seed's best epoch
    and val AP under ``seeds`` when there are several)."""
    scored = with_duplicate_members(fs, exp)
    runs: dict[int, dict[str, Any]] = {}
    trained: dict[int, dict[str, Any]] = {}
    for seed in exp.seeds:
        result, config = train_head(with_seed(params, seed), kind, fs, bar=bar,
                                    train_crops=train_crops, experiment=exp)
        metrics, _ = evaluate_sets(params, scored, result.model, config.decision.as_decision(),
                                   exp)
        runs[seed] = {"test": metrics.get("test"), "val": metrics.get("val")}
        assert config.training is not None
        trained[seed] = config.training.to_json()
    training = trained[exp.seeds[0]]
    if exp.n_seeds > 1:
        training = {**training, "seeds": {s: {k: t[k] for k in ("best_epoch", "best_val_ap")}
                                          for s, t in trained.items()}}
    tables = {split: over_seeds({s: r[split] for s, r in runs.items()})
              if all(r[split] for r in runs.values()) else None for split in ("test", "val")}
    return {**tables, "training": training, "patch_views": fs.n_views,
            "recipe": HEAD_RECIPES[kind]}


def published_columns(preset: str, heads: list[str]) -> dict[str, dict[str, Any]]:
    """Per head, the published mean accuracy / AP on ``preset`` (percent, with the source and
    whether the protocol is the preset's), when the preset carries one."""
    if preset in ("", "none"):
        return {}
    out = {}
    for head in dict.fromkeys(heads):
        method = PAPER_METHOD.get(head)
        found = published_results(preset, method) if method else []
        if found:
            p = found[0]
            out[head] = {"acc": p.acc, "ap": p.ap, "title": p.title, "source": p.source,
                         "same_protocol": p.same_protocol, "note": p.note}
    return out


def format_comparison(out: dict[str, Any], split: str = "test") -> str:
    """Rows = sources + mean; columns = acc / real / fake / AP for each head."""
    heads = [h for h in out.get("order") or out["heads"] if out["heads"][h].get(split)]
    if not heads:
        return f"(no {split} rows to compare)"
    first = out["heads"][heads[0]][split]
    sources = ([r for r in first["rows"] if r not in first.get("missing", {})]
               if first.get("rows") else
               sorted({s for h in heads for s in out["heads"][h][split]["per_source"]}))
    several = "seeds" in out
    cell = 12 if several else 7
    width = 4 * cell
    head_line = f"{'':<18}" + "".join(f"{h:^{width}}|" for h in heads)
    sub = f"{'source':<18}" + "".join(
        "".join(f"{m.replace('_acc', ''):>{cell}}" for m in METRICS) + "|" for _ in heads)
    lines = [head_line, sub]
    mean_label = first.get("mean_label", "mean")
    for src in [*sources, "mean"]:
        cells = []
        for h in heads:
            tab = out["heads"][h][split]
            m = tab["mean"] if src == "mean" else tab["per_source"].get(src, {})
            sd = (std_of(tab, "mean") if src == "mean" else std_of(tab, "per_source", src)) \
                if several else None
            cells.append("".join(f"{pct_pm(m.get(k), _std(sd, k, several)):>{cell}}"
                                 for k in METRICS) + "|")
        lines.append(f"{mean_label if src == 'mean' else src:<18}" + "".join(cells))
    published = out.get("published") or {}
    base = {h: h.split(" K=")[0] for h in heads}
    if published and split == "test":
        cells = []
        for h in heads:
            p = published.get(base[h])
            vals = {"acc": p["acc"] / 100 if p and p.get("acc") is not None else None,
                    "ap": p["ap"] / 100 if p and p.get("ap") is not None else None}
            cells.append("".join(f"{pct(vals.get(k)):>{cell}}" for k in METRICS) + "|")
        lines.append(f"{'paper (published)':<18}" + "".join(cells))
    lines.append("")
    first_seed = " of the first seed" if several else ""
    lines.append(f"{split} split, %; mean = over sources. Epoch kept (each head's selection "
                 f"rule){first_seed}: "
                 + ", ".join(f"{h} {out['heads'][h]['training']['best_epoch']}" for h in heads)
                 + ".")
    if several:
        lines.append(f"{seeds_note(out)} (train.seeds {out['seeds']}; sample standard "
                     "deviation).")
    multi = sorted({out["heads"][h].get("patch_views", 1) for h in heads} - {1})
    if multi:
        lines.append(f"K = patch-order views per image: K=1 trains and scores view 0 only; K>1 "
                     f"trains on one random view per image per epoch and scores the "
                     f"{out.get('view_average', 'mean_logit')} of the K views.")
    for head, p in published.items() if split == "test" else ():
        same = "same protocol" if p.get("same_protocol") else "another protocol"
        lines.append(f"paper: {head} = {p['title']}, {p['source']} ({same}"
                     f"{'; ' + p['note'] if p.get('note') else ''}).")
    for h in heads:
        tr = out["heads"][h]["training"]
        if tr.get("explained_variance") is not None:
            lines.append(f"{h}: top-{tr['nsnet_k']} caption directions removed, explaining "
                         f"{100 * tr['explained_variance']:.1f}% of the captions' energy.")
    return "\n".join(lines)


def _std(std: dict[str, Any] | None, key: str, several: bool) -> float | None:
    return (std or {}).get(key) if several else None
