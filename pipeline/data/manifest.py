"""The manifest: one row per image file under the data roots (``cache/manifest.parquet``).

Columns: stable content id, path, label, source, deterministic split, size, mode, format, bytes
and a status/error column. ``pipeline.data.index_stage`` builds it; every later stage reads it
with ``read_manifest``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

MANIFEST_COLUMNS = [
    "id", "path", "path_raw", "label", "source", "split", "width", "height", "mode", "format",
    "bytes", "status", "error",
]
OK = "ok"


def content_id(data: bytes) -> str:
    """Stable 128-bit content hash used as the image id everywhere downstream."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def split_for(image_id: str, train: float, val: float) -> str:
    """Deterministic split from the content hash: identical bytes always share a split."""
    head = image_id[:8]
    if not all(c in "0123456789abcdef" for c in head):  # "path-..." ids of unreadable files
        head = hashlib.blake2b(image_id.encode(), digest_size=4).hexdigest()
    u = int(head, 16) / 2**32
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def read_manifest(path: str | Path, only_ok: bool = False) -> pd.DataFrame:
    """Read a manifest written by the ``index`` stage (``nsnet index``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `nsnet index` (or `dvc repro`) first")
    df = pq.read_table(path).to_pandas()
    if only_ok:
        df = df[df["status"] == OK].reset_index(drop=True)
    return df
