"""Mean ± standard deviation over the seeds of ``train.seeds``.

Every stage that trains (``train``, ``compare``, ``matrix``, ``robustness``) or scores several
seeds' heads (``evaluate``, ``evaluate-degraded``) produces one result per seed with the same
shape; ``over_seeds`` turns them into one result of that shape whose numbers are the means,
with ``std`` (the same shape, numbers only) and ``seeds`` beside them. The standard deviation
is the sample one (ddof = 1), as papers print ``mean ± std`` over a few runs. Counts that every
seed shares (``n``, ``n_real``) and text stay as they are. A single seed's result is returned
unchanged, so one seed prints and writes exactly what it always has.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

STD = "std"
SEEDS = "seeds"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _mean_std(values: list[Any]) -> tuple[Any, Any]:
    """(mean, std) of one field over the seeds; std None when the field has no spread to say
    (text, lists, counts equal in every seed)."""
    first = values[0]
    if isinstance(first, dict):
        means: dict[str, Any] = {}
        stds: dict[str, Any] = {}
        for key in first:
            m, s = _mean_std([v.get(key) if isinstance(v, dict) else None for v in values])
            means[key] = m
            if s is not None:
                stds[key] = s
        return means, (stds or None)
    if not all(_number(v) for v in values):
        return first, None
    if isinstance(first, int) and all(v == first for v in values):
        return first, None  # a count: the same rows in every seed
    arr = np.asarray(values, dtype=np.float64)
    if np.isnan(arr).all():
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = arr[~np.isnan(arr)]
        std = float(np.std(ok, ddof=1)) if len(ok) > 1 else float("nan")
    return float(np.mean(ok)), std


def over_seeds(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One result from each seed's (``{seed: result}``, all of one shape): means in place,
    ``std`` and ``seeds`` beside them; one seed: that result, unchanged."""
    if not runs:
        raise ValueError("no seeds to aggregate")
    if len(runs) == 1:
        return next(iter(runs.values()))
    means, stds = _mean_std(list(runs.values()))
    return {**means, STD: stds or {}, SEEDS: list(runs)}


def std_of(result: dict[str, Any], *path: str) -> Any:
    """The standard deviation at ``path`` of an ``over_seeds`` result (None: one seed)."""
    node: Any = result.get(STD)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def n_seeds(result: dict[str, Any]) -> int:
    return len(result.get(SEEDS) or ()) or 1


def seeds_note(result: dict[str, Any]) -> str:
    """``mean ± std over 3 seeds`` for an aggregated result, "" for one seed."""
    n = n_seeds(result)
    return f"mean ± std over {n} seeds" if n > 1 else ""


def finite(v: Any) -> bool:
    return _number(v) and not math.isnan(v)
