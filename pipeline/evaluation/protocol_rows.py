"""Evaluation rows of a benchmark protocol: the preset's official table, and the shared reals
that the deduplicated cache would otherwise lose. Which rows are scored is the
``Experiment``'s decision (``nsnet.data.experiment``); this module applies it to features.

``protocol_table`` scores the test split as the protocol says: with ``protocol.preset`` the
preset's rows in the paper's order and names, each against its own reals or its real pool
(``preset_table``); without one, one row per generator (``nsnet.metrics.per_source_table``).

Benchmarks share real images between generators: UniversalFakeDetect's diffusion folders
(``ldm_200/0_real``, ``glide_100_27/0_real``, ...) hold copies of the same LAION reals. The
index keeps one copy of each content (the others get status ``duplicate``) so features are
computed once; for a per-generator table each generator still needs its own reals. This module
adds those copies back as rows that share the kept copy's features, but only when the copy is
in the same split with the same label under another source (never across splits, which would be
train/test leakage; those are reported by the index instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from nsnet.data.experiment import Experiment
from nsnet.data.presets import Preset, match_sources
from nsnet.extraction.cached_features import FeatureSet, take_rows
from nsnet.metrics import (
    TABLE_KEYS,
    binary_metrics,
    per_source_table,
    with_decision_accuracies,
)


def with_duplicate_members(fs: FeatureSet, exp: Experiment) -> FeatureSet:
    """``fs`` plus one row per same-split, same-label duplicate filed under another source
    (``Experiment.member_rows``), sharing the kept copy's features."""
    extra_idx, extra_rows = exp.member_rows(fs.frame)
    if not len(extra_idx):
        return fs
    idx = torch.from_numpy(np.r_[np.arange(len(fs)), extra_idx].astype(np.int64))
    new_frame = pd.concat([fs.frame, extra_rows], ignore_index=True)
    return FeatureSet(new_frame, take_rows(fs.image, idx), take_rows(fs.text, idx), fs.provenance)


def preset_table(frame: pd.DataFrame, preset: Preset, threshold: float,
                 prob_col: str = "prob", raw_col: str | None = None) -> dict[str, Any]:
    """The preset's official rows (in its order) scored on ``frame`` (test rows), plus the mean.

    A row scores the fakes of its folders against their own reals or, when they hold none,
    against its real pool. A row with no fakes or no reals is listed under ``missing`` and left
    out of the mean, whose label then says over how many of the official rows it was taken.
    """
    y, p = frame["label"].to_numpy(), frame[prob_col].to_numpy()
    raw = frame[raw_col or prob_col].to_numpy()  # acc_05 / oracle columns (see metrics)

    def metrics(idx: np.ndarray) -> dict[str, Any]:
        return with_decision_accuracies(binary_metrics(y[idx], p[idx], threshold), y[idx],
                                        p[idx], raw[idx])

    source = frame["source"].to_numpy()
    known = set(source)
    per: dict[str, Any] = {}
    missing: dict[str, str] = {}
    used: set[str] = set()
    scored = np.zeros(len(frame), dtype=bool)
    for row in preset.rows:
        folders, _ = match_sources(row.folders, known)
        in_row = np.isin(source, folders)
        fake, real = in_row & (y == 1), in_row & (y == 0)
        pool: list[str] = []
        if not real.any() and row.real_pool:
            pool, _ = match_sources([row.real_pool], known)
            real = np.isin(source, pool) & (y == 0)
        used.update(folders, pool)
        if not fake.any() or not real.any():
            what = [w for w, ok in (("fake", fake.any()), ("real", real.any())) if not ok]
            pool_note = f" (real pool {row.real_pool})" if row.real_pool and not real.any() else ""
            missing[row.name] = f"no {' and no '.join(what)} test images{pool_note}"
            continue
        idx = np.flatnonzero(fake | real)
        scored[idx] = True
        per[row.name] = {**metrics(idx), "sources": folders,
                         "real_pool": pool[0] if pool else None}
    if not per:
        raise ValueError(
            f"protocol.preset {preset.name!r}: none of its {len(preset.rows)} test rows "
            f"({', '.join(preset.row_names)}) has both real and fake test images; test sources "
            f"found: {', '.join(sorted(known)) or 'none'}"
        )
    mean = {k: float(np.nanmean([m[k] for m in per.values()])) for k in TABLE_KEYS}
    n_rows = len(preset.rows)
    return {
        "preset": preset.name, "rows": preset.row_names, "per_source": per, "missing": missing,
        "mean": mean, "mean_rows": list(per), "mean_complete": not missing,
        "mean_label": "mean" if not missing else f"mean ({len(per)}/{n_rows} rows)",
        "overall": metrics(np.flatnonzero(scored)),
        "not_in_preset": sorted(known - used),
    }


def protocol_table(exp: Experiment, frame: pd.DataFrame, threshold: float,
                   raw_col: str | None = None) -> dict[str, Any]:
    """The test table of the experiment: the preset's official rows, else one row per source
    (``raw_col``: the uncalibrated probability for the acc@0.5 column)."""
    if exp.preset is None:
        return per_source_table(frame, threshold=threshold, raw_col=raw_col)
    return preset_table(frame, exp.preset, threshold, raw_col=raw_col)


def protocol_test_set(exp: Experiment, fs: FeatureSet) -> FeatureSet:
    """The experiment's test rows (a preset scores every test row its official rows name)."""
    return fs.subset(exp.test_mask(fs.frame))


def protocol_val_set(exp: Experiment, fs: FeatureSet) -> FeatureSet:
    """Validation rows of the training sources (none when a preset finds none of them)."""
    return fs.subset(exp.val_mask(fs.frame))
