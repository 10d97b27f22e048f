"""A stat-only listing of the data roots: what ``index`` works from, and what DVC depends on.

``scan_roots`` walks every root (following directory symlinks once, loop-safe) and records, per
file, the root as ``params.yaml`` names it, the path relative to that root, its size and its
modification time. No image is opened. The ``scan`` stage writes the listing to
``cache/listing.parquet`` on every ``dvc repro``; the file's bytes change exactly when a file is
added, removed, resized or touched, so DVC re-runs ``index`` only then, whether the roots are
folders, symlinks or paths outside the workspace (DVC's own hash of a data folder would read
every image and does not see through a symlinked folder).

Folders that cannot be listed are kept in the listing's metadata, so ``index`` reports them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nsnet.atomic import atomic_path
from nsnet.config import Params
from nsnet.data.images import display_path
from nsnet.data.layouts import LAYOUT_EXAMPLES, LayoutError, WalkError

COLUMNS = ["root", "relpath", "size", "mtime_ns"]
LISTING_FORMAT = 1


def scan_root(root: str, errors: list[WalkError] | None = None) -> pd.DataFrame:
    """Every file below ``root``: root (as given), relpath (bytes), size, mtime_ns.

    A file whose ``stat`` fails (a dangling symlink, a file removed meanwhile) is listed with
    size and mtime -1, so ``index`` probes it and records why it cannot be used.
    """
    if not Path(root).is_dir():
        raise LayoutError(f"data root {root} does not exist or is not a folder")
    rel, size, mtime = [], [], []
    for relpath, st in _walk(os.fsencode(root), errors):
        rel.append(relpath)
        size.append(st.st_size if st else -1)
        mtime.append(st.st_mtime_ns if st else -1)
    return pd.DataFrame({"root": root, "relpath": rel,
                         "size": np.asarray(size, np.int64),
                         "mtime_ns": np.asarray(mtime, np.int64)}, columns=COLUMNS)


def _walk(base: bytes, errors: list[WalkError] | None
          ) -> Iterator[tuple[bytes, os.stat_result | None]]:
    """(path relative to ``base``, stat or None) of every file, sorted, following directory
    symlinks but never entering a directory twice (no loops); unlistable folders go to
    ``errors``."""
    seen: set[tuple[int, int]] = set()

    def visit(rel: bytes) -> Iterator[tuple[bytes, os.stat_result | None]]:
        here = os.path.join(base, rel) if rel else base
        try:
            st = os.stat(here)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if errors is not None:
                errors.append(WalkError(display_path(here),
                                        f"{type(exc).__name__}: {exc.strerror or exc}"))
            return
        for entry in entries:
            sub = os.path.join(rel, entry.name) if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                yield from visit(sub)
                continue
            try:
                yield sub, entry.stat(follow_symlinks=True)
            except OSError:  # dangling symlink, or gone since the listing of the folder
                yield sub, None

    yield from visit(b"")


def scan_roots(params: Params) -> tuple[pd.DataFrame, list[WalkError]]:
    """The listing of every root of ``data.roots`` (in their order, files sorted)."""
    errors: list[WalkError] = []
    frames = [scan_root(r.path, errors) for r in params.data.roots]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return df, errors


def write_listing(path: str | Path, df: pd.DataFrame, errors: list[WalkError]) -> None:
    """Write the listing deterministically: same tree, same bytes (DVC compares its hash)."""
    table = pa.Table.from_pandas(df[COLUMNS], preserve_index=False,
                                 schema=pa.schema([("root", pa.string()),
                                                   ("relpath", pa.binary()),
                                                   ("size", pa.int64()),
                                                   ("mtime_ns", pa.int64())]))
    meta = {"format": LISTING_FORMAT, "unlisted_folders": [asdict(e) for e in errors]}
    table = table.replace_schema_metadata({b"nsnet": json.dumps(meta, sort_keys=True).encode()})
    path = Path(path)
    if path.exists():
        try:
            if pq.read_table(path).equals(table, check_metadata=True):
                return  # the same tree: the file (and its mtime) stays as it is
        except (OSError, ValueError, pa.ArrowException):
            pass
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


def read_listing(path: str | Path) -> tuple[pd.DataFrame, list[WalkError]]:
    """A listing written by ``write_listing`` (``nsnet scan``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `nsnet scan` (or `dvc repro`) first")
    table = pq.read_table(path)
    meta: dict[str, Any] = json.loads((table.schema.metadata or {}).get(b"nsnet", b"{}"))
    if meta.get("format") != LISTING_FORMAT:
        raise ValueError(f"{path} is not a listing this nsnet reads; rerun `nsnet scan`")
    errors = [WalkError(**e) for e in meta.get("unlisted_folders", [])]
    return table.to_pandas(), errors


def listing_summary(df: pd.DataFrame, errors: list[WalkError], roots: Sequence[str] = ()) -> str:
    """One line: files and bytes per root (``roots`` first, in order, ``no files`` if empty)."""
    by_root = {root: g for root, g in df.groupby("root", sort=False)}
    parts = [f"{root}: {len(g)} files, {g['size'].clip(lower=0).sum() / 1e6:.1f} MB"
             if (g := by_root.get(root)) is not None else f"{root}: no files"
             for root in dict.fromkeys([*roots, *by_root])]
    unlisted = f"; {len(errors)} folder(s) could not be listed" if errors else ""
    return "scan: " + "; ".join(parts or ["no files"]) + unlisted


def empty_root_message(root: str, layout: str = "auto") -> str:
    """What to say of a data root that is a folder holding no files: what to put there."""
    real, fake = LAYOUT_EXAMPLES.get(layout, LAYOUT_EXAMPLES["real_fake"])
    base = root.rstrip("/") or "/"
    base = base if base.endswith("/") else base + "/"
    return (f"data root {root} holds no files: put your images in it, in label folders such as "
            f"{base}{real} and {base}{fake} (the layouts: docs/usage.md, \"Using your own "
            "images\")")


def root_problem(root: str, layout: str = "auto") -> str:
    """Why ``root`` gives no file, looked up on disk now: not a folder, nothing could be
    listed, or an empty folder; ``""`` when it holds files (a listing without them is stale)."""
    if not Path(root).is_dir():
        return f"data root {root} does not exist or is not a folder"
    errors: list[WalkError] = []
    if next(_walk(os.fsencode(root), errors), None) is not None:
        return ""
    if errors:
        return f"data root {root}: no file could be listed ({errors[0].path}: {errors[0].error})"
    return empty_root_message(root, layout)


def check_listed_roots(params: Params, df: pd.DataFrame, listing: str | Path | None = None
                       ) -> None:
    """Raise ``LayoutError`` for a root of ``data.roots`` with no file in the listing ``df``,
    saying why (``root_problem``), or that ``listing`` is stale when the root holds files."""
    listed = set(df["root"].unique())
    for root in params.data.roots:
        if root.path in listed:
            continue
        problem = root_problem(root.path, root.layout or params.data.layout)
        raise LayoutError(problem or (
            f"{listing or 'the listing'} lists no files of data root {root.path}, which holds "
            "files now: it was made before they were added, or for other roots; run `nsnet "
            "scan` (or `dvc repro`) first"))
