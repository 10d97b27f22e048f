"""The feature store: immutable segments of per-image features, keyed by content id.

Layout (``cache/features/``, one DVC directory output)::

    <part>/<settings fingerprint>/part.json      what made these features (settings, models)
    <part>/<settings fingerprint>/<digest>.h5    a segment: ``ids`` (n,) S32 + the part's arrays
    clean.json, degraded.json                    what the heads read (``extract_stage.catalogs``)

A *part* is one kind of feature (a patch selection, a caption, the CLIP embedding of patch
order k, ...) made with one set of settings, which include what was done to the image before
(``protocol.train_reencode``, a degradation) and a fingerprint of the code. Its rows are keyed
by the image's content id, so the store grows an image at a time: a run computes exactly the
(image, part) pairs that are missing and appends them as new segment files. A segment is never
rewritten, which makes it the unit of resumption (a killed run keeps every segment it
committed), lets two runs or many dask workers write side by side, and lets DVC store and link
each file once.

Readers gather rows by id (``PartStore.gather``): the keys of every segment are read once into
a sorted index (numpy, no per-row Python), so loading millions of ids costs one pass over the
segments' id arrays plus the arrays themselves.

Writes go to a temporary file under ``<store>/../.tmp`` (same filesystem, outside the DVC
output) and are renamed into place, so a reader never sees a partial segment.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nsnet.atomic import OutputWriteError, atomic_path, default_mode, reserve_space
from nsnet.provenance import fingerprint

ID_DTYPE = "S32"  # blake2b-128 content ids: 32 hex characters
H5_SLACK = 1 << 20  # room checked beyond the raw arrays (HDF5 metadata)
STORE_FORMAT = 1  # version of the segment layout (``part.json`` ``format``)
PART_FILE = "part.json"
SEGMENT_SUFFIX = ".h5"


class StoreError(RuntimeError):
    """The feature store is missing rows, or holds files this version cannot read."""


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    return np.asarray(list(ids), dtype=ID_DTYPE)


def decode_ids(arr: np.ndarray) -> list[str]:
    """Fixed-width id bytes -> str, vectorised (one numpy pass, no per-id Python decode)."""
    return np.char.decode(np.asarray(arr), "ascii").tolist()


@dataclass(frozen=True)
class Part:
    """One kind of feature made with one set of settings (a directory of the store)."""

    name: str  # selection | caption | image | text | composite | a recipe's name
    settings: dict[str, Any]

    @property
    def key(self) -> str:
        """The settings fingerprint: the part's directory name."""
        return fingerprint({"part": self.name, **self.settings})

    @property
    def relpath(self) -> str:
        return f"{self.name}/{self.key}"


@dataclass(frozen=True)
class KeyIndex:
    """Sorted ids of a part's segments with the segment and row each id is stored at."""

    keys: np.ndarray  # (m,) ID_DTYPE, sorted, unique
    segment: np.ndarray  # (m,) int32 index into ``segments``
    row: np.ndarray  # (m,) int64 row inside that segment
    segments: tuple[str, ...]  # segment file names

    def __len__(self) -> int:
        return len(self.keys)

    def locate(self, ids: np.ndarray) -> np.ndarray:
        """Position of each id in ``keys`` (-1 where absent)."""
        ids = np.asarray(ids, dtype=ID_DTYPE)
        if not len(self.keys):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, ids)
        pos = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pos] == ids
        return np.where(found, pos, -1)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.locate(ids) >= 0


EMPTY_INDEX = KeyIndex(np.empty(0, ID_DTYPE), np.empty(0, np.int32), np.empty(0, np.int64), ())


class PartStore:
    """The segments of one part (``<store>/<part>/<fingerprint>/``)."""

    def __init__(self, store: FeatureStore, part: Part) -> None:
        self.store, self.part = store, part
        self.path = store.root / part.relpath
        self._index: KeyIndex | None = None
        self._listed: tuple[str, ...] | None = None

    # ------------------------------------------------------------------ reading
    def segment_names(self) -> tuple[str, ...]:
        if not self.path.is_dir():
            return ()
        return tuple(sorted(p.name for p in os.scandir(self.path)
                            if p.name.endswith(SEGMENT_SUFFIX) and not p.name.startswith(".")))

    def index(self) -> KeyIndex:
        """The id index over the current segments (re-read when segments were added)."""
        names = self.segment_names()
        if self._index is not None and names == self._listed:
            return self._index
        keys, segs, rows = [], [], []
        for s, name in enumerate(names):
            with h5py.File(self.path / name, "r") as f:
                ids = f["ids"][:].astype(ID_DTYPE, copy=False)
            keys.append(ids)
            segs.append(np.full(len(ids), s, dtype=np.int32))
            rows.append(np.arange(len(ids), dtype=np.int64))
        if not keys:
            self._index, self._listed = EMPTY_INDEX, names
            return EMPTY_INDEX
        all_keys = np.concatenate(keys)
        # stable sort + first occurrence: an id in two segments (two runs computed it) is
        # read from the first segment by name, deterministically
        order = np.argsort(all_keys, kind="stable")
        sorted_keys = all_keys[order]
        first = np.ones(len(sorted_keys), dtype=bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        keep = order[first]
        self._index = KeyIndex(sorted_keys[first], np.concatenate(segs)[keep],
                               np.concatenate(rows)[keep], names)
        self._listed = names
        return self._index

    def info(self) -> dict[str, Any]:
        """``part.json``: the part's settings and the provenance of what made it ({} if none)."""
        try:
            return json.loads((self.path / PART_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def missing(self, ids: Sequence[str]) -> np.ndarray:
        """Boolean mask of ``ids`` that have no row in this part."""
        return ~self.index().contains(encode_ids(ids))

    def gather(self, ids: Sequence[str] | np.ndarray, names: Iterable[str],
               out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Rows of datasets ``names`` for ``ids``, in the order given.

        ``out`` may hold preallocated arrays (e.g. float32, or a memory map) to fill in place.
        Raises ``StoreError`` naming the part when an id has no row.
        """
        ids = np.asarray(ids, dtype=ID_DTYPE)
        names = list(names)
        idx = self.index()
        pos = idx.locate(ids)
        if (pos < 0).any():
            n = int((pos < 0).sum())
            raise StoreError(
                f"{n} of {len(ids)} images have no {self.part.name} features in {self.path} "
                f"(settings {self.part.key}); run `nsnet extract` (or `dvc repro`)")
        seg, row = idx.segment[pos], idx.row[pos]
        result = dict(out or {})
        order = np.argsort(seg, kind="stable")
        bounds = np.flatnonzero(np.diff(seg[order])) + 1
        for group in np.split(order, bounds) if len(order) else []:
            name = idx.segments[int(seg[group[0]])]
            rows = row[group]
            with h5py.File(self.path / name, "r") as f:
                for ds_name in names:
                    dset = f[ds_name]
                    if ds_name not in result:
                        result[ds_name] = _empty(dset, len(ids))
                    result[ds_name][group] = _read_rows(dset, rows)
        for ds_name in names:  # no ids at all: empty arrays of the right shape
            if ds_name not in result:
                result[ds_name] = self._empty_like(ds_name)
        return result

    def _empty_like(self, ds_name: str) -> np.ndarray:
        for name in self.index().segments[:1]:
            with h5py.File(self.path / name, "r") as f:
                return _empty(f[ds_name], 0)
        return np.empty((0,), dtype=np.float32)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per dataset, its row shape and dtype (from the first segment; {} when empty)."""
        for name in self.segment_names()[:1]:
            with h5py.File(self.path / name, "r") as f:
                return {k: (f[k].shape[1:], f[k].dtype) for k in f if k != "ids"}
        return {}

    def nbytes(self) -> int:
        return sum((self.path / n).stat().st_size for n in self.segment_names())

    # ------------------------------------------------------------------ writing
    def write_segment(self, ids: Sequence[str], arrays: dict[str, np.ndarray],
                      provenance: dict[str, Any]) -> Path:
        """Commit ``ids`` with their ``arrays`` as one new segment; return its path.

        The segment's name is a digest of its ids, so writing the same rows twice (two runs)
        gives the same file, and a reader sees either no file or the complete file.
        """
        ids = list(ids)
        if any(len(a) != len(ids) for a in arrays.values()):
            raise ValueError("every array of a segment needs one row per id")
        name = f"{fingerprint(ids)}-{len(ids)}{SEGMENT_SUFFIX}"
        target = self.path / name
        if target.exists():  # another run committed exactly these rows
            return target
        nbytes = sum(a.nbytes for a in arrays.values() if a.dtype != object)
        nbytes += sum(len(str(s)) * 4 for a in arrays.values() if a.dtype == object for s in a)
        with self.store.temporary(name) as tmp:
            reserve_space(tmp, nbytes + 32 * len(ids) + H5_SLACK)
            with h5py.File(tmp, "w") as f:
                f.create_dataset("ids", data=encode_ids(ids))
                for key, arr in arrays.items():
                    if arr.dtype == object:
                        f.create_dataset(key, data=[str(s) for s in arr],
                                         dtype=h5py.string_dtype("utf-8"))
                    else:
                        f.create_dataset(key, data=arr)
            self.ensure(provenance)  # only once a segment is ready: a failed write leaves none
            os.replace(tmp, target)
        return target

    def ensure(self, provenance: dict[str, Any]) -> None:
        """Create the part's directory and its ``part.json`` (once; never rewritten)."""
        target = self.path / PART_FILE
        if target.exists():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        body = {"format": STORE_FORMAT, "part": self.part.name, "key": self.part.key,
                "settings": self.part.settings, "provenance": provenance}
        text = json.dumps(body, indent=2, sort_keys=True, default=str) + "\n"
        with self.store.temporary(PART_FILE) as tmp:
            tmp.write_text(text)
            try:
                os.link(tmp, target)  # first writer wins; an existing file is never replaced
            except FileExistsError:
                pass


def _empty(dset: h5py.Dataset, n: int) -> np.ndarray:
    if h5py.check_string_dtype(dset.dtype) is not None:
        return np.empty((n,), dtype=object)
    return np.empty((n, *dset.shape[1:]), dtype=dset.dtype)


def _read_rows(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``dset[rows]`` for any row order: the whole dataset when most rows are wanted, else
    h5py's fancy read on sorted unique rows."""
    if len(rows) * 2 >= dset.shape[0]:
        data = dset[:]
    else:
        uniq, inverse = np.unique(rows, return_inverse=True)
        data, rows = dset[uniq], inverse
    if h5py.check_string_dtype(dset.dtype) is not None:
        data = np.asarray([s.decode() if isinstance(s, bytes) else s for s in data], dtype=object)
    return data[rows]


class FeatureStore:
    """A feature store rooted at a directory (``cache/features``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._parts: dict[str, PartStore] = {}

    @property
    def tmp_dir(self) -> Path:
        """Where segments are written before they are renamed in (outside the DVC output)."""
        return self.root.parent / ".tmp"

    def part(self, part: Part) -> PartStore:
        """The (cached) ``PartStore`` of ``part``."""
        key = part.relpath
        if key not in self._parts:
            self._parts[key] = PartStore(self, part)
        return self._parts[key]

    def temporary(self, name: str) -> _Temporary:
        return _Temporary(self.tmp_dir, name)

    def check_format(self) -> None:
        """Refuse a store written in another segment format (``StoreError`` says what to do)."""
        for info in self.describe():
            fmt = info["info"].get("format")
            if fmt not in (None, STORE_FORMAT):
                raise StoreError(
                    f"{info['path']} has store format {fmt!r}; this nsnet reads format "
                    f"{STORE_FORMAT}. Remove it with `nsnet cache --gc --yes` after checking "
                    "`nsnet cache`, then rerun `nsnet extract`.")

    def describe(self) -> list[dict[str, Any]]:
        """Every part directory: name, key, path, part.json, segment count, rows and bytes."""
        out = []
        if not self.root.is_dir():
            return out
        for part_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for key_dir in sorted(p for p in part_dir.iterdir() if p.is_dir()):
                info = {}
                try:
                    info = json.loads((key_dir / PART_FILE).read_text())
                except (OSError, ValueError):
                    pass
                segs = sorted(p for p in key_dir.glob(f"*{SEGMENT_SUFFIX}"))
                rows = sum(_segment_rows(p) for p in segs)
                out.append({"part": part_dir.name, "key": key_dir.name, "path": key_dir,
                            "info": info, "segments": len(segs), "rows": rows,
                            "bytes": sum(p.stat().st_size for p in segs)})
        return out

    def remove(self, part_dir: Path) -> None:
        """Delete one part directory (its segments and part.json)."""
        part_dir = Path(part_dir)
        if self.root.resolve() not in part_dir.resolve().parents:
            raise ValueError(f"{part_dir} is not inside the store {self.root}")
        shutil.rmtree(part_dir)
        parent = part_dir.parent
        if parent != self.root and not any(parent.iterdir()):
            parent.rmdir()
        self._parts.clear()

    def clean_tmp(self, older_than_s: float = 24 * 3600) -> int:
        """Remove temporary files of killed runs older than ``older_than_s``; return the count."""
        import time

        if not self.tmp_dir.is_dir():
            return 0
        now, n = time.time(), 0
        for p in self.tmp_dir.iterdir():
            try:
                if p.is_file() and now - p.stat().st_mtime > older_than_s:
                    p.unlink()
                    n += 1
            except OSError:
                continue
        return n


def _segment_rows(path: Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f["ids"].shape[0])
    except (OSError, KeyError):
        return 0


class _Temporary:
    """A temporary path in ``directory`` removed on exit unless it was renamed away."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".partial",
                                   dir=self.directory)
        os.close(fd)
        os.chmod(tmp, default_mode())
        self.path = Path(tmp)
        return self.path

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError):
            # the store's folders went away under the run (h5py reports it without an errno)
            if exc.errno == errno.ENOENT or not self.directory.is_dir():
                raise OutputWriteError(
                    exc.errno, f"could not write {self.name}: {self.directory} disappeared "
                    "while the run wrote to it (was the cache deleted?). A rerun of `nsnet "
                    "extract` (or `dvc repro`) computes whatever the store lacks.") from exc
            raise OutputWriteError(
                exc.errno or 0,
                f"could not write {self.name} in {self.directory}: {exc.strerror or exc}. "
                "Committed segments are intact; rerun to resume.") from exc


# ----------------------------------------------------------------------------- tables


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
