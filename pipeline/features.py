"""Cached features joined with the manifest, ready for training and evaluation.

No image is opened here: the heads see only ``cache/embeddings.h5``. Arrays are read into
memory once; when they would not fit comfortably in RAM they are memory-mapped instead.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline.config import Params
from pipeline.extract import clip_request
from pipeline.manifest import read_manifest
from pipeline.provenance import ProvenanceMismatch, check_compatible
from pipeline.store import decode_ids, h5_provenance, require


@dataclass
class FeatureSet:
    """Aligned rows: metadata frame plus image/text feature tensors (float32)."""

    frame: pd.DataFrame  # id, label, source, split, path
    image: torch.Tensor
    text: torch.Tensor
    provenance: dict[str, Any]

    def subset(self, mask: np.ndarray) -> FeatureSet:
        idx = torch.from_numpy(np.flatnonzero(mask))
        return FeatureSet(self.frame[mask].reset_index(drop=True), self.image[idx],
                          self.text[idx], self.provenance)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.frame["label"].to_numpy().astype(np.int64))

    def __len__(self) -> int:
        return len(self.frame)


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _read(dset: h5py.Dataset, path: Path) -> torch.Tensor:
    """Whole dataset in RAM as float32, or a float16 memmap of it when it is too large.

    Consumers gather batches and call ``.float()``, which works for both.
    """
    nbytes = dset.size * 4
    offset = dset.id.get_offset()
    if nbytes > 0.5 * _available_ram() and dset.chunks is None and offset is not None:
        mm = np.memmap(path, dtype=dset.dtype, mode="r", offset=offset, shape=dset.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memmap is intended
            return torch.from_numpy(mm)
    return torch.from_numpy(dset[:].astype(np.float32))


def load_features(params: Params, manifest: str | Path, embeddings: str | Path) -> FeatureSet:
    """Join embeddings with the manifest (labels, sources, splits) and check provenance."""
    embeddings = require(embeddings, "embed")
    prov = h5_provenance(embeddings)
    check_compatible(prov, clip_request(params), str(embeddings),
                     "Rerun `nsnet embed` (or `dvc repro`) with the current clip settings.")
    rows = read_manifest(manifest, only_ok=True)
    with h5py.File(embeddings, "r") as f:
        ids = decode_ids(f["ids"][:])
        if ids != rows["id"].tolist():
            raise ProvenanceMismatch(
                f"{embeddings} does not hold the manifest's images (the manifest changed after "
                "the features were computed). Rerun `dvc repro`."
            )
        image = _read(f["image"], embeddings)
        text = _read(f["text"], embeddings)
    frame = rows[["id", "label", "source", "split", "path"]].reset_index(drop=True)
    return FeatureSet(frame, image, text, prov)


def select(fs: FeatureSet, split: str | list[str], sources: list[str] | None = None) -> FeatureSet:
    """Rows of the given split(s), restricted to ``sources`` when that list is non-empty."""
    splits = [split] if isinstance(split, str) else split
    mask = fs.frame["split"].isin(splits).to_numpy().copy()
    if sources:
        known = set(fs.frame["source"])
        unknown = sorted(set(sources) - known)
        if unknown:
            raise ValueError(f"protocol names unknown source(s) {unknown}; known: {sorted(known)}")
        mask &= fs.frame["source"].isin(sources).to_numpy()
    return fs.subset(mask)
