"""The feature store: HDF5 arrays and Parquet tables aligned with manifest ids.

Files (all under ``cache/``):

* ``selections.h5``  ``ids`` (N,), ``cells`` int32 (N, K, 2) (row, col) of each grid patch in
                      the EXIF-oriented image (pixels = cell x patch size), ``entropy`` float32
                      (N, K): about 650 bytes per image, no pixels
* ``captions.parquet`` columns id, caption, model
* ``embeddings.h5``  ``ids`` (N,), ``image`` float16 (N, d), or (N, K, d) with
                      ``patches.views: K`` > 1 (view 0 first), ``text`` float16 (N, d)
* ``composites.h5``  only with ``patches.keep_composites``: ``composites`` uint8 (N, S, S, 3)

Each carries its provenance as JSON (HDF5 attribute / Parquet schema metadata ``nsnet``) and,
for the ``extract`` outputs, the request each part was made with (``requests``) and the cache
``layout`` version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path

ID_DTYPE = "S64"
H5_SLACK = 1 << 20  # room checked beyond the raw arrays (HDF5 metadata)


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    return np.asarray([i.encode() for i in ids], dtype=ID_DTYPE)


def decode_ids(arr: np.ndarray) -> list[str]:
    """Fixed-width id bytes -> str, vectorised (one numpy pass, no per-id Python decode)."""
    return np.char.decode(np.asarray(arr, dtype=ID_DTYPE), "ascii").tolist()


def h5_provenance(path: str | Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs.get("provenance", "{}"))


def h5_ids(path: str | Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return decode_ids(f["ids"][:])


def write_table(path: str | Path, df: pd.DataFrame, provenance: dict[str, Any]) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"nsnet": json.dumps(provenance, sort_keys=True).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def table_provenance(path: str | Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"nsnet", b"{}"))


def require(path: str | Path, producer: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `nsnet {producer}` (or `dvc repro`) first")
    return path
