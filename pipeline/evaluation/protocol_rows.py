"""Evaluation rows of a benchmark protocol that the deduplicated cache would otherwise lose.

Benchmarks share real images between generators: UniversalFakeDetect's diffusion folders
(``ldm_200/0_real``, ``glide_100_27/0_real``, ...) hold copies of the same LAION reals. The
index keeps one copy of each content (the others get status ``duplicate``) so features are
computed once; for a per-generator table each generator still needs its own reals. This module
adds those copies back as rows that share the kept copy's features, but only when the copy is
in the same split with the same label under another source (never across splits, which would be
train/test leakage; those are reported by the index instead).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.data.manifest import read_manifest
from pipeline.extraction.cached_features import FeatureSet, _take


def with_duplicate_members(fs: FeatureSet, manifest: str | Path) -> FeatureSet:
    """``fs`` plus one row per same-split, same-label duplicate filed under another source."""
    df = read_manifest(manifest)
    dups = df[df["status"] == "duplicate"]
    if dups.empty or not len(fs):
        return fs
    frame = fs.frame
    first = {image_id: i for i, image_id in enumerate(frame["id"])}
    extra_idx, extra_rows = [], []
    seen = set(zip(frame["id"], frame["source"], strict=True))
    for row in dups.itertuples():
        i = first.get(row.id)
        if i is None:
            continue
        kept = frame.iloc[i]
        key = (row.id, row.source)
        if key in seen or kept["split"] != row.split or kept["label"] != row.label:
            continue
        seen.add(key)
        extra_idx.append(i)
        extra_rows.append({**kept.to_dict(), "source": row.source, "path": row.path})
    if not extra_idx:
        return fs
    idx = torch.from_numpy(np.r_[np.arange(len(frame)), np.asarray(extra_idx)].astype(np.int64))
    new_frame = pd.concat([frame, pd.DataFrame(extra_rows, columns=frame.columns)],
                          ignore_index=True)
    return FeatureSet(new_frame, _take(fs.image, idx), _take(fs.text, idx), fs.provenance)
