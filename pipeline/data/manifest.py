"""The manifest: one row per image file under the data roots (``cache/manifest.parquet``).

Columns: stable content id; the file as ``root`` (as ``data.roots`` names it) + ``relpath``
(bytes, relative to the root) and ``path`` (the two joined, printable); label, source,
deterministic split; size, mode, format, the header facts the shortcut audit reads (JPEG
quality, IJG tables, EXIF, ICC), bytes and modification time; what reading the file
gave (``probe_status``/``probe_error``) and the row's final ``status``/``error`` (which adds
duplicates, label conflicts, too-small images and skip lists). Paths are never absolute unless
the root is, so a cloned or moved workspace reads its own files. ``nsnet.data.index_stage``
builds it; every later stage reads it with ``read_manifest``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

MANIFEST_COLUMNS = [
    "id", "root", "relpath", "path", "label", "source", "split", "width", "height", "mode",
    "format", "jpeg_quality", "ijg_tables", "exif", "icc", "bytes", "mtime_ns", "probe_status",
    "probe_error", "status", "error",
]
OK = "ok"


class OldManifest(ValueError):
    """A manifest written by an nsnet before relative paths (``path_raw`` column)."""


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
    if "relpath" not in df:
        raise OldManifest(f"{path} was written by an older nsnet (absolute paths); rerun "
                          "`nsnet index` (or `dvc repro`): it hashes every file once")
    if only_ok:
        df = df[df["status"] == OK].reset_index(drop=True)
    return df


def file_paths(rows: pd.DataFrame) -> list[bytes]:
    """The file of each row as bytes: ``root/relpath``, relative to the working directory
    when the root is (the workspace reads its own data)."""
    return [os.path.join(os.fsencode(root), rel)
            for root, rel in zip(rows["root"].tolist(), rows["relpath"].tolist(), strict=True)]
