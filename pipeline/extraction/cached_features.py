"""Cached features joined with the manifest, ready for training and evaluation.

No image is opened here: the heads see only ``cache/embeddings.h5``. Arrays are read into
memory once; when they would not fit comfortably in RAM they are memory-mapped instead.

With ``patches.views: K`` > 1 the image features are (n, K, d), one per patch order (view 0
first); a cache with a 2-D ``image`` dataset has one view. ``FeatureSet.first_views(k)`` keeps
the leading k views (k = 1 gives the (n, d) features of view 0).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from pipeline.cache_store import decode_ids, h5_provenance, require
from pipeline.config import Params
from pipeline.data.manifest import read_manifest
from pipeline.extraction.extract_stage import check_layout, clip_request
from pipeline.provenance import ProvenanceMismatch, check_compatible


class MappedRows:
    """Rows ``index`` of a memory-mapped (n, d) tensor, gathered only when indexed.

    Behaves like the (len(index), d) tensor for what the heads need: ``rows[i:j]``,
    ``rows[idx]`` (returns a real tensor of those rows), ``len``, ``shape`` and ``dtype``. Taking
    a subset composes indices, so selecting the training split never copies the cache.
    """

    def __init__(self, base: torch.Tensor, index: torch.Tensor, views: int | None = None
                 ) -> None:
        self.base, self.index = base, index
        self.views = views  # (n, K, d) base: keep the leading ``views`` (1: view 0 as (n, d))

    def _cut(self, out: torch.Tensor) -> torch.Tensor:
        if self.views is None:
            return out
        return out[..., 0, :] if self.views == 1 else out[..., :self.views, :]

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        rows = self.index[key]
        if rows.dim() == 0:
            return self._cut(self.base[rows])
        order = rows.argsort()  # read the mapped file in ascending order, then restore order
        out = torch.empty((len(rows), *self.base.shape[1:]), dtype=self.base.dtype)
        out[order] = self.base[rows[order]]
        return self._cut(out)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        inner = tuple(self.base.shape[1:])
        if self.views is not None:
            inner = inner[1:] if self.views == 1 else (self.views, *inner[1:])
        return torch.Size((len(self.index), *inner))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype


Rows = torch.Tensor | MappedRows


@dataclass
class FeatureSet:
    """Aligned rows: metadata frame plus image/text features (in-RAM float32 tensors, or
    float16 memory-mapped ``MappedRows`` when the cache is larger than memory)."""

    frame: pd.DataFrame  # id, label, source, split, path (, format)
    image: Rows
    text: Rows
    provenance: dict[str, Any]

    def subset(self, mask: np.ndarray) -> FeatureSet:
        idx = torch.from_numpy(np.flatnonzero(mask))
        return FeatureSet(self.frame[mask].reset_index(drop=True), _take(self.image, idx),
                          _take(self.text, idx), self.provenance)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.frame["label"].to_numpy().astype(np.int64))

    @property
    def n_views(self) -> int:
        """Patch-order views per image (``patches.views``); 1 for (n, d) features."""
        return self.image.shape[1] if len(self.image.shape) == 3 else 1

    @property
    def dim(self) -> int:
        return self.image.shape[-1]

    def first_views(self, k: int) -> FeatureSet:
        """The same rows with only views 0..k-1 (k = 1: view 0's (n, d) features)."""
        if not 1 <= k <= self.n_views:
            raise ValueError(f"the features hold {self.n_views} patch-order view(s), so the "
                             f"first {k} cannot be taken; raise patches.views and rerun "
                             "`nsnet extract`")
        if k == self.n_views:
            return self
        if isinstance(self.image, MappedRows):
            image: Rows = MappedRows(self.image.base, self.image.index, k)
        else:
            image = self.image[:, 0] if k == 1 else self.image[:, :k]
        return FeatureSet(self.frame, image, self.text, {**self.provenance, "views": k})

    @property
    def mapped(self) -> bool:
        return isinstance(self.image, MappedRows)

    def __len__(self) -> int:
        return len(self.frame)


def _take(rows: Rows, idx: torch.Tensor) -> Rows:
    if isinstance(rows, MappedRows):
        return MappedRows(rows.base, rows.index[idx], rows.views)
    return rows[idx]


def iter_blocks(rows: Rows, block: int = 65536) -> Iterator[torch.Tensor]:
    """Yield consecutive float32 blocks of ``rows`` (bounded memory for mapped caches)."""
    for i in range(0, len(rows), block):
        yield rows[i:i + block].float()


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _read(dset: h5py.Dataset, path: Path) -> Rows:
    """Whole dataset in RAM as float32, or a memmap of it (stored dtype) when the float32
    copy would take more than half the available RAM.

    Consumers gather batches and call ``.float()``, which works for both.
    """
    nbytes = dset.size * 4
    offset = dset.id.get_offset()
    if nbytes > 0.5 * _available_ram() and dset.chunks is None and offset is not None:
        mm = np.memmap(path, dtype=dset.dtype, mode="r", offset=offset, shape=dset.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memmap is intended
            base = torch.from_numpy(mm)
        return MappedRows(base, torch.arange(len(base)))
    return torch.from_numpy(dset[:]).float()


def load_features(params: Params, manifest: str | Path, embeddings: str | Path) -> FeatureSet:
    """Join embeddings with the manifest (labels, sources, splits) and check provenance."""
    embeddings = require(embeddings, "extract")
    check_layout(embeddings, "embeddings")
    prov = h5_provenance(embeddings)
    check_compatible(prov, clip_request(params), str(embeddings),
                     "Rerun `nsnet extract` (or `dvc repro`) with the current clip settings.")
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
    views = image.shape[1] if len(image.shape) == 3 else 1
    if views != params.patches.views:
        raise ProvenanceMismatch(
            f"{embeddings} holds {views} patch-order view(s) per image but patches.views is "
            f"{params.patches.views}. Rerun `nsnet extract` (or `dvc repro`); only the image "
            "embeddings are recomputed."
        )
    columns = ["id", "label", "source", "split", "path"]
    columns += [c for c in ("format",) if c in rows]  # per-format metrics (shortcut check)
    frame = rows[columns].reset_index(drop=True)
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
