"""The ``robustness`` stage: every head under every degradation, its tables and its figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsnet.atomic import write_json
from nsnet.config import Params
from nsnet.data.experiment import resolve_experiment
from nsnet.evaluation.robustness import robustness
from nsnet.evaluation.seeds import std_of
from nsnet.heads.train_stage import epoch_bar, epochs_of
from nsnet.metrics import pct_pm
from nsnet.provenance import base_provenance
from nsnet.reports.result_figures import render_robustness


def run_robustness(params: Params, manifest: str | Path, features: str | Path,
                   details_json: str | Path, png: str | Path,
                   heads: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Train each head (per seed), score clean + every degradation, write the tables and the
    figure of accuracy and AP against each degradation's strength."""
    exp = resolve_experiment(params, manifest, *([heads] if heads else []))
    epochs = sum(epochs_of(params, head) for head in exp.heads)
    with epoch_bar(epochs * exp.n_seeds, "robustness") as bar:
        rob = robustness(params, exp, manifest, features, exp.heads, bar)
    rob["provenance"] = base_provenance()
    write_json(details_json, rob)
    render_robustness(rob, png)
    return rob


def format_robustness(rob: dict[str, Any], metric: str = "acc") -> str:
    """Rows = heads, columns = clean + each degradation: mean ``metric`` over test rows (%)."""
    names = ["clean", *rob["degradations"]]
    several = len(rob.get("seeds") or ()) > 1
    width = max(13 if several else 9, *(len(n) + 2 for n in names))
    lines = [f"test {metric} (%) under each degradation, mean over test rows",
             f"{'head':<18}" + "".join(f"{n:>{width}}" for n in names)]
    for head in rob["heads"]:
        res = rob["results"][head]
        cells = [pct_pm(res[n]["mean"].get(metric), (std_of(res[n], "mean") or {}).get(metric))
                 for n in names]
        lines.append(f"{head:<18}" + "".join(f"{c:>{width}}" for c in cells))
    if several:
        lines.append(f"mean±std over {len(rob['seeds'])} seeds (train.seeds)")
    return "\n".join(lines)
