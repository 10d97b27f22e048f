"""Train every head on the same cache and print the comparison: one block per metric, rows =
sources + mean, columns = heads, within 120 columns (heads that do not fit go on below).

Each head reads its own recipe of features from the one store (``nsnet.config.HEAD_RECIPES``:
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

import textwrap
from pathlib import Path
from typing import Any

from nsnet.atomic import write_json
from nsnet.config import Params
from nsnet.data.experiment import Experiment, resolve_experiment
from nsnet.data.presets import published_results
from nsnet.evaluation.evaluate_stage import evaluate_sets
from nsnet.evaluation.protocol_rows import with_duplicate_members
from nsnet.evaluation.seeds import over_seeds, seeds_note, std_of
from nsnet.extraction.cached_features import FeatureSet
from nsnet.heads.method import TRAINING_FREE, is_training_free, method
from nsnet.heads.train_stage import (
    SeedFit,
    TrainViews,
    epoch_bar,
    epochs_of,
    fit_over_seeds,
    head_inputs,
)
from nsnet.metrics import compact, details_path, pct, pct_pm
from nsnet.provenance import base_provenance
from nsnet.registry import RECIPES

METRICS = ("acc", "real_acc", "fake_acc", "ap")
METRIC_LABELS = {"acc": "acc (%)", "real_acc": "real acc (%)", "fake_acc": "fake acc (%)",
                 "ap": "AP (%)"}
PAPER = "paper (published)"  # the row of the published means under a preset
WIDTH = 120  # the printed table's and notes' columns at most


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
        if views and RECIPES.get(method(kind).recipe).patch_orders:  # checks k before training
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
    fits = fit_over_seeds(params, exp, kind, fs, train_crops, bar)

    def score(fit: SeedFit) -> dict[str, Any]:
        metrics, _ = evaluate_sets(params, scored, fit.model, fit.decision, exp)
        return {"test": metrics.get("test"), "val": metrics.get("val")}

    runs = fits.each(score)
    training = fits.record()
    tables = {split: over_seeds({s: r[split] for s, r in runs.items()})
              if all(r[split] for r in runs.values()) else None for split in ("test", "val")}
    return {**tables, "training": training, "patch_views": fs.n_views,
            "recipe": method(kind).recipe}


def published_columns(preset: str, heads: list[str]) -> dict[str, dict[str, Any]]:
    """Per head, the published mean accuracy / AP on ``preset`` (percent, with the source and
    whether the protocol is the preset's), when the preset carries one."""
    if preset in ("", "none"):
        return {}
    out = {}
    for head in dict.fromkeys(heads):
        name = method(head).published  # its name in the presets' published tables
        found = published_results(preset, name) if name else []
        if found:
            p = found[0]
            out[head] = {"acc": p.acc, "ap": p.ap, "title": p.title, "source": p.source,
                         "same_protocol": p.same_protocol, "note": p.note}
    return out


def format_comparison(out: dict[str, Any], split: str = "test", width: int = WIDTH) -> str:
    """One block per metric (acc, real, fake, AP): rows = sources + mean (+ the published
    number under a preset), columns = heads. Heads that would pass ``width`` columns go on in
    a further block of the same metric, and the notes are wrapped, so no line is longer."""
    heads = [h for h in out.get("order") or out["heads"] if out["heads"][h].get(split)]
    if not heads:
        return f"(no {split} rows to compare)"
    first = out["heads"][heads[0]][split]
    sources = ([r for r in first["rows"] if r not in first.get("missing", {})]
               if first.get("rows") else
               sorted({s for h in heads for s in out["heads"][h][split]["per_source"]}))
    several = "seeds" in out
    published = (out.get("published") or {}) if split == "test" else {}
    mean_label = first.get("mean_label", "mean")

    def cell(head: str, src: str | None, key: str) -> str:
        """One number: of ``src`` (None: the mean; PAPER: the published mean)."""
        if src == PAPER:
            p = published.get(head.split(" K=")[0]) or {}
            return pct(None if p.get(key) is None else p[key] / 100)
        tab = out["heads"][head][split]
        m = tab["mean"] if src is None else tab["per_source"].get(src, {})
        sd = (std_of(tab, "mean") if src is None else std_of(tab, "per_source", src)) \
            if several else None
        return pct_pm(m.get(key), _std(sd, key, several))

    rows: list[tuple[str, str | None]] = [*((s, s) for s in sources), (mean_label, None)]
    label_w = max(len(x) for x in [*sources, mean_label, PAPER, *METRIC_LABELS.values()]) + 1
    blocks = []
    for key in METRICS:
        shown = rows + ([(PAPER, PAPER)] if published and key in ("acc", "ap") else [])
        texts = {h: [cell(h, src, key) for _, src in shown] for h in heads}
        widths = {h: max(len(h), *map(len, texts[h])) + 2 for h in heads}
        for group in _fit(heads, widths, width - label_w):
            lines = [f"{METRIC_LABELS[key]:<{label_w}}"
                     + "".join(f"{h:>{widths[h]}}" for h in group),
                     "-" * (label_w + sum(widths[h] for h in group))]
            lines += [f"{name:<{label_w}}" + "".join(f"{texts[h][i]:>{widths[h]}}"
                                                     for h in group)
                      for i, (name, _) in enumerate(shown)]
            blocks.append("\n".join(lines))
    first_seed = " of the first seed" if several else ""
    notes = [f"{split} split, %; mean = over sources; acc / real acc / fake acc: on all / real / "
             "generated images at each head's decision threshold. Epoch kept (each head's "
             f"selection rule){first_seed}: "
             + ", ".join(_unit(f"{h} {_epoch(out['heads'][h]['training'])}")
                         for h in heads) + "."]
    if several:
        notes.append(f"{seeds_note(out)} (train.seeds {out['seeds']}; sample standard "
                     "deviation).")
    multi = sorted({out["heads"][h].get("patch_views", 1) for h in heads} - {1})
    if multi:
        notes.append(f"K = patch-order views per image: K=1 trains and scores view 0 only; K>1 "
                     f"trains on one random view per image per epoch and scores the "
                     f"{out.get('view_average', 'mean_logit')} of the K views.")
    for head, p in published.items():
        same = _unit("same protocol" if p.get("same_protocol") else "another protocol")
        notes.append(f"paper: {head} = {p['title']}, {p['source']} ({same}"
                     f"{'; ' + p['note'] if p.get('note') else ''}).")
    for h in heads:
        tr = out["heads"][h]["training"]
        if tr.get("explained_variance") is not None:
            notes.append(f"{h}: top-{tr['nsnet_k']} caption directions removed, explaining "
                         f"{100 * tr['explained_variance']:.1f}% of the captions' energy.")
    wrapped = [textwrap.fill(n, width, subsequent_indent="  ", break_on_hyphens=False)
               .replace(_KEEP, " ") for n in notes]
    return "\n\n".join(blocks) + "\n\n" + "\n".join(wrapped)


_KEEP = "\x00"  # a space the notes' wrapping does not break at


def _epoch(training: dict[str, Any]) -> str:
    """The epoch kept, or ``training-free`` for a head fit without a gradient step."""
    return TRAINING_FREE if is_training_free(training) else str(training["best_epoch"])


def _unit(text: str) -> str:
    """``text`` kept on one line by the wrapping (``composite_probe K=4 20``)."""
    return text.replace(" ", _KEEP)


def _fit(heads: list[str], widths: dict[str, int], room: int) -> list[list[str]]:
    """``heads`` in order, cut into runs whose columns fit ``room`` (one head at least each)."""
    groups: list[list[str]] = []
    used = room + 1
    for h in heads:
        if used + widths[h] > room:
            groups.append([])
            used = 0
        groups[-1].append(h)
        used += widths[h]
    return groups


def _std(std: dict[str, Any] | None, key: str, several: bool) -> float | None:
    return (std or {}).get(key) if several else None
