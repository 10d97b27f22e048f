"""The ``index`` stage: the listed image files into ``cache/manifest.parquet``.

One row per image file: stable content id, path, label, source, deterministic split, size,
mode, and a status/error column. The index is incremental: a file whose path, size and
modification time are those of a row of the previous manifest keeps that row's id and probe,
so only new or changed files are hashed and decoded (``--rescan`` reads everything).
Files that give no usable image (unreadable, not an image, too small, skip-listed...) are
listed with a reason in the index report (never silently dropped) and left out of the
manifest, which later stages read: adding one changes none of their inputs (they are read
again at the next index). Exact duplicate contents are reported, and contents found under
both labels are excluded as label conflicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from nsnet import runtime
from nsnet.atomic import write_json
from nsnet.cache_store import table_provenance, write_table
from nsnet.config import Params
from nsnet.data.audit import header_row
from nsnet.data.images import (
    UNSUPPORTED,
    ImageError,
    decode_data,
    display_path,
    read_bytes,
    unsupported_reason,
)
from nsnet.data.layouts import Entry, LayoutError, entries_of
from nsnet.data.listing import check_listed_roots, read_listing, scan_roots
from nsnet.data.manifest import (
    MANIFEST_COLUMNS,
    OK,
    OldManifest,
    content_id,
    read_manifest,
    split_for,
)
from nsnet.data.skip_lists import SKIP_STATUS, SkipLists, read_skip_lists
from nsnet.provenance import base_provenance


class StrictModeError(RuntimeError):
    """``--strict`` was given and some images were skipped."""


# The rows of the manifest: images and the copies of one (the later stages read duplicates as
# members of the first copy). Files that give no usable image are only in the report.
MANIFEST_STATUSES = (OK, "duplicate", "label_conflict")
# Probe outcomes that depend on the file's bytes alone: reused while size and mtime hold.
# ``unreadable``/``missing`` depend on the machine (permissions, links) and are probed again.
CONTENT_PROBES = ("ok", "corrupt", "not_an_image", "empty_file", "too_large")
PROBE_COLUMNS = ["id", "width", "height", "mode", "format", "jpeg_quality", "ijg_tables",
                 "exif", "icc", "bytes", "probe_status", "probe_error"]
NO_HEADER = {"jpeg_quality": -1, "ijg_tables": False, "exif": False, "icc": False}


@dataclass(frozen=True)
class _Probe:
    path: str
    max_pixels: int


def _probe(job: _Probe) -> dict[str, Any]:
    """Hash and fully decode one file (runs in a worker process)."""
    row: dict[str, Any] = {"id": None, "width": -1, "height": -1, "mode": "", "format": "",
                           **NO_HEADER, "bytes": -1, "probe_status": OK, "probe_error": ""}
    try:
        data = read_bytes(job.path)
        row["bytes"] = len(data)
        row["id"] = content_id(data)
        _, info = decode_data(data, job.path, job.max_pixels)
        row.update(width=info.width, height=info.height, mode=info.mode, format=info.format)
        head = header_row(data)  # what the shortcut audit reads, from the same bytes
        row.update({k: head[k] for k in NO_HEADER})
    except ImageError as exc:
        row.update(probe_status=exc.reason, probe_error=exc.detail)
    if row["id"] is None:  # unreadable: derive a stable id from the path instead
        row["id"] = _path_id(job.path)
    return row


def _path_id(path: str) -> str:
    return "path-" + hashlib.blake2b(os.fsencode(path), digest_size=12).hexdigest()


_display = display_path


def _carve_val(image_id: str, params: Params) -> str:
    """Deterministic train/val choice for a training image of a root that has no val split."""
    s = params.data.split
    share = s.train / (s.train + s.val) if s.train + s.val > 0 else 1.0
    return "train" if split_for(image_id, share, 1.0 - share) == "train" else "val"


def assign_split(official: str | None, image_id: str, role: str, root_has_val: bool,
                 params: Params) -> str:
    """Our split of one image from its root's role, the layout's official split and its hash.

    * role ``test``: always ``test``.
    * role ``train``: the official ``val`` stays ``val``; everything else is ``train``, with a
      deterministic val share carved out by content hash when the root has no val folder.
    * role ``auto``: the official split is kept (a root with train but no val gets the val share
      carved out of train); images without one are split train/val/test by content hash.
    """
    if role == "test":
        return "test"
    if role == "train":
        if official == "val":
            return "val"
        return "train" if root_has_val else _carve_val(image_id, params)
    if official is None:
        return split_for(image_id, params.data.split.train, params.data.split.val)
    if official == "train" and not root_has_val:
        return _carve_val(image_id, params)
    return official


@dataclass
class Labelled:
    """The listing's files in label folders, with the root's role and layout facts."""

    listing: pd.DataFrame  # root, relpath, size, mtime_ns of the labelled files
    entries: list[Entry]
    roles: list[str]
    root_has_val: list[bool]
    unlabelled: list[str]  # printable paths of files outside any label folder


def labelled_files(params: Params, listing: pd.DataFrame) -> Labelled:
    """Classify the listed files of each root by its layout (label, source, official split)."""
    keep: list[np.ndarray] = []
    entries: list[Entry] = []
    roles: list[str] = []
    has_val: list[bool] = []
    unlabelled: list[str] = []
    for root in params.data.roots:
        rows = np.flatnonzero(listing["root"].to_numpy() == root.path)
        rels = listing["relpath"].to_numpy()[rows]
        outside: list[int] = []
        found = list(entries_of(root.path, rels, root.layout or params.data.layout, outside))
        if not found:
            raise LayoutError(f"no image files with a real/fake label folder found under "
                              f"{root.path}")
        unlabelled.extend(_display(os.path.join(os.fsencode(root.path), rels[i]))
                          for i in outside)
        val = any(e.split == "val" for _, e in found)
        keep.append(rows[[i for i, _ in found]])
        entries.extend(e for _, e in found)
        roles.extend([root.role] * len(found))
        has_val.extend([val] * len(found))
    picked = listing.iloc[np.concatenate(keep) if keep else []].reset_index(drop=True)
    return Labelled(picked, entries, roles, has_val, unlabelled)


def _previous_probes(previous: pd.DataFrame | None, max_pixels: int) -> dict[Any, dict]:
    """(root, relpath, size, mtime_ns) -> probe columns of the previous manifest's rows that
    can be reused: content-determined outcomes, read with the same decompression limit."""
    if previous is None or previous.empty:
        return {}
    prov_limit = previous.attrs.get("max_image_pixels")
    out = {}
    cols = list(dict.fromkeys(["root", "relpath", "bytes", "mtime_ns", *PROBE_COLUMNS]))
    for rec in previous[cols].to_dict("records"):
        status = rec["probe_status"]
        if status not in CONTENT_PROBES or rec["mtime_ns"] < 0:
            continue
        if status == "too_large" and prov_limit != max_pixels:
            continue  # decoded under another limit: read it again
        if status == OK and rec["width"] * rec["height"] > max_pixels:
            continue  # now over the limit: probe (refused without decoding)
        key = (rec["root"], rec["relpath"], rec["bytes"], rec["mtime_ns"])
        out[key] = {k: rec[k] for k in PROBE_COLUMNS}
    return out


@dataclass
class ScanStats:
    files: int = 0  # files in label folders
    probed: int = 0  # hashed and decoded now (new or changed files)
    reused: int = 0  # taken from the previous manifest (same path, size and mtime)
    not_read: int = 0  # skip-listed or unsupported names: never read


def scan(params: Params, listing: pd.DataFrame, skip: SkipLists | None = None,
         previous: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str], ScanStats]:
    """The manifest rows of the listed files; only new or changed files are read.

    A file whose root, relative path, size and modification time equal a row of ``previous``
    (the last manifest) keeps that row's id and probe (as git's index and DVC's state do);
    every other file is hashed and fully decoded once. Files named by ``skip``
    (``data.skip_lists``) or with an extension we do not decode are never read.
    """
    found = labelled_files(params, listing)
    reuse = _previous_probes(previous, params.data.max_image_pixels)
    stats = ScanStats(files=len(found.entries))
    probes: list[dict[str, Any] | None] = [None] * len(found.entries)
    jobs: list[tuple[int, _Probe]] = []
    lst = found.listing
    for i, (e, root, rel, size, mtime) in enumerate(zip(
            found.entries, lst["root"], lst["relpath"], lst["size"], lst["mtime_ns"],
            strict=True)):
        listed = skip.reason(e.path) if skip else None
        unsupported = unsupported_reason(e.path)
        if listed or unsupported:
            stats.not_read += 1
            probes[i] = _unread_row(e.path, SKIP_STATUS if listed else UNSUPPORTED,
                                    listed or unsupported or "")
            continue
        hit = reuse.get((root, rel, size, mtime)) if mtime >= 0 else None
        if hit is not None:
            probes[i] = dict(hit)
            stats.reused += 1
        else:
            jobs.append((i, _Probe(e.path, params.data.max_image_pixels)))
    stats.probed = len(jobs)
    for (i, _), row in zip(jobs, _run_probes([j for _, j in jobs], params), strict=True):
        probes[i] = row
    rows = []
    for i, (e, p) in enumerate(zip(found.entries, probes, strict=True)):
        assert p is not None
        split = assign_split(e.split, p["id"], found.roles[i], found.root_has_val[i], params)
        rows.append({**p, "root": lst["root"].iat[i], "relpath": lst["relpath"].iat[i],
                     "path": _display(e.path), "mtime_ns": int(lst["mtime_ns"].iat[i]),
                     "label": e.label, "source": _display(e.source), "split": split})
    df = pd.DataFrame(rows, columns=[c for c in MANIFEST_COLUMNS if c not in ("status", "error")])
    df = df.sort_values(["root", "relpath"], kind="stable").reset_index(drop=True)
    _final_status(df, params)
    return df[MANIFEST_COLUMNS], found.unlabelled, stats


def _unread_row(path: str, status: str, error: str) -> dict[str, Any]:
    """The probe of a file that is not read (skip-listed, or a name we do not decode)."""
    return {"id": _path_id(path), "width": -1, "height": -1, "mode": "", "format": "",
            **NO_HEADER, "bytes": -1, "probe_status": status, "probe_error": error}


def _run_probes(jobs: list[_Probe], params: Params) -> list[dict[str, Any]]:
    workers = runtime.index_workers(params.data.num_workers)
    out: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs), desc="index", unit="file", dynamic_ncols=True, mininterval=1.0,
               disable=not jobs)
    with bar, contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 64:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            results = pool.map(_probe, jobs, chunksize=32)
        else:
            results = map(_probe, jobs)
        for probe in results:
            out.append(probe)
            bar.update(1)
    return out


def _final_status(df: pd.DataFrame, params: Params) -> None:
    """status/error from the probe plus the size rules (too small for one patch), in place;
    duplicates and label conflicts are marked afterwards (``mark_duplicates``)."""
    df["status"] = df["probe_status"]
    df["error"] = df["probe_error"]
    side = params.patches.size
    small = (df["status"] == OK) & (np.minimum(df["width"], df["height"]) < side)
    df.loc[small, "status"] = "too_small"
    df.loc[small, "error"] = [f"{w}x{h} is smaller than one {side}x{side} patch"
                              for w, h in zip(df.loc[small, "width"], df.loc[small, "height"],
                                              strict=True)]


def mark_duplicates(df: pd.DataFrame) -> dict[str, Any]:
    """Flag repeated contents in place; return the duplicate report."""
    ok = (df["status"] == OK) & df["id"].duplicated(keep=False)  # only repeated ids are grouped
    groups = df[ok].groupby("id").indices
    conflicts, duplicates, cross_split = [], [], []
    ok_index = df.index[ok]
    for image_id, positions in groups.items():
        if len(positions) < 2:
            continue
        idx = ok_index[positions]
        sub = df.loc[idx]
        entry = {"id": image_id, "paths": sub["path"].tolist(), "labels": sub["label"].tolist(),
                 "splits": sub["split"].tolist()}
        if sub["label"].nunique() > 1:
            conflicts.append(entry)
            df.loc[idx, "status"] = "label_conflict"
            df.loc[idx, "error"] = "the same content appears as real and as fake"
            continue
        if sub["split"].nunique() > 1:
            cross_split.append(entry)
        duplicates.append(entry)
        df.loc[idx[1:], "status"] = "duplicate"
        df.loc[idx[1:], "error"] = f"same content as {sub['path'].iloc[0]}"
    return {"label_conflicts": conflicts, "duplicates": duplicates,
            "cross_split_duplicates": cross_split}


def summarise(df: pd.DataFrame) -> dict[str, Any]:
    ok = df[df["status"] == OK]
    return {
        "files": len(df),
        "ok": len(ok),
        "skipped": dict(Counter(df.loc[df["status"] != OK, "status"])),
        "by_split_label": {f"{s}/{'fake' if lab else 'real'}": int(n)
                           for (s, lab), n in ok.groupby(["split", "label"]).size().items()},
        "by_source": {str(k): int(v) for k, v in ok.groupby("source").size().items()},
    }


def previous_manifest(path: str | Path) -> pd.DataFrame | None:
    """The manifest a previous ``index`` wrote at ``path``, if it can be reused (else None)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        df = read_manifest(path)
        df.attrs["max_image_pixels"] = table_provenance(path).get("max_image_pixels")
    except (OldManifest, OSError, ValueError):
        return None  # an older format, or damaged: every file is read once
    if any(c not in df for c in (*PROBE_COLUMNS, "root", "relpath", "mtime_ns")):
        return None  # written by another version of the index: read every file once
    return df


def build_index(params: Params, out: str | Path, report: str | Path,
                strict: bool | None = None, listing: str | Path | None = None,
                rescan: bool = False) -> dict[str, Any]:
    """Run the index stage end to end; return the summary that was also written to ``report``.

    ``listing``: the ``nsnet scan`` output to index (else the roots are scanned here).
    Files unchanged since the manifest at ``out`` was written are not read again, unless
    ``rescan``.
    """
    if listing is not None:
        files, walk_errors = read_listing(listing)
    else:
        files, walk_errors = scan_roots(params)
    check_listed_roots(params, files, listing)  # an empty root, or a stale listing
    skip = read_skip_lists(params.data.skip_lists)
    previous = None if rescan else previous_manifest(out)
    df, unlabelled, stats = scan(params, files, skip, previous)
    dup_report = mark_duplicates(df)
    summary = summarise(df)
    summary["unlabelled_files"] = len(unlabelled)
    summary["unlisted_folders"] = len(walk_errors)
    summary["skip_list_entries"] = len(skip.where)
    summary["skip_list_unmatched"] = len(skip.unmatched)
    summary["read"] = {"hashed_and_decoded": stats.probed, "reused": stats.reused,
                       "not_read": stats.not_read}
    strict = params.data.strict if strict is None else strict
    skipped = df[df["status"] != OK]
    unlisted = skipped[skipped["status"] != SKIP_STATUS]  # listed files are skipped on purpose
    if strict and (len(unlisted) or walk_errors):
        first = (f"{unlisted.iloc[0]['path']} ({unlisted.iloc[0]['status']}: "
                 f"{unlisted.iloc[0]['error']})" if len(unlisted) else
                 f"{walk_errors[0].path} (folder could not be listed: {walk_errors[0].error})")
        raise StrictModeError(
            f"--strict: {len(unlisted)} file(s) would be skipped and {len(walk_errors)} "
            f"folder(s) could not be listed, e.g. {first}"
        )
    provenance = {
        **base_provenance(),
        "stage": "index",
        "roots": [r.path for r in params.data.roots],
        "root_roles": [r.role for r in params.data.roots],
        "root_layouts": [r.layout or params.data.layout for r in params.data.roots],
        "layout": params.data.layout,
        "split": params.data.split.__dict__,
        "max_image_pixels": params.data.max_image_pixels,
        "patch_size": params.patches.size,
        "skip_lists": list(params.data.skip_lists),
    }
    write_manifest(out, df[df["status"].isin(MANIFEST_STATUSES)].reset_index(drop=True),
                   provenance)
    skipped_list = [
        {"path": r.path, "status": r.status, "error": r.error} for r in skipped.itertuples()
    ]
    write_json(report, {"summary": summary, **dup_report, "skipped": skipped_list[:10000],
                        "unlabelled": unlabelled[:10000],
                        "skip_list_unmatched": skip.unmatched[:10000],
                        "unlisted_folders": [w.__dict__ for w in walk_errors[:10000]],
                        "provenance": provenance})
    examples = {str(reason): [(r.path, r.error) for r in group.head(3).itertuples()]
                for reason, group in skipped.groupby("status", sort=True)}
    return {"summary": summary, **{k: len(v) for k, v in dup_report.items()},
            "skipped_examples": examples,
            "unlabelled_examples": unlabelled[:3],
            "unlisted_folders": [(w.path, w.error) for w in walk_errors]}


def write_manifest(out: str | Path, df: pd.DataFrame, provenance: dict[str, Any]) -> None:
    """Write the manifest, unless ``out`` holds the same rows made with the same settings: it
    is then left byte for byte (its code version is the one that made those rows), so a run
    that changed only files outside it (unusable ones, in the report) re-runs nothing after
    ``index``."""
    path = Path(out)
    try:
        same = path.is_file() and pa.Table.from_pandas(df, preserve_index=False).equals(
            pq.read_table(path)) and _settings(table_provenance(path)) == _settings(provenance)
    except (OSError, ValueError, pa.ArrowException):
        same = False  # unreadable or of another shape: written anew
    if not same:
        write_table(path, df, provenance)


def _settings(provenance: dict[str, Any]) -> Any:
    """The provenance without the versions of the code and libraries, as JSON reads it back."""
    versions = set(base_provenance())
    return json.loads(json.dumps({k: v for k, v in provenance.items() if k not in versions},
                                 sort_keys=True, default=str))


def read_skipped(report: str | Path) -> pd.DataFrame:
    """The skipped files of an index report (path, status, error), one row each: those that
    give no usable image are listed only there, duplicates and label conflicts also in the
    manifest."""
    rows = json.loads(Path(report).read_text())["skipped"]
    return pd.DataFrame(rows, columns=["path", "status", "error"])


def summary_line(result: dict[str, Any], report: str | Path) -> str:
    """One short line: files, what was read, usable rows, splits, and where the details are."""
    s = result["summary"]
    read = s["read"]
    skipped = sum(s["skipped"].values())
    splits = ", ".join(f"{k} {v}" for k, v in s["by_split_label"].items())
    return (f"index: {s['files']} files ({read['hashed_and_decoded']} read, "
            f"{read['reused']} unchanged); {s['ok']} usable, {skipped} skipped; "
            f"{result['duplicates']} duplicate groups, {result['label_conflicts']} label "
            f"conflicts; {splits} (details: {report})")


def skipped_lines(result: dict[str, Any], per_reason: int = 3) -> list[str]:
    """Human-readable lines: each skip reason with its count and a few example files."""
    counts = result["summary"]["skipped"]
    lines = []
    for reason in sorted(counts):
        lines.append(f"  {reason}: {counts[reason]} file(s)")
        for path, error in result.get("skipped_examples", {}).get(reason, [])[:per_reason]:
            lines.append(f"    {path}: {error}")
    for path, error in result.get("unlisted_folders", [])[:per_reason * 3]:
        lines.append(f"  unlisted_folder: {path}: {error}")
    return lines


def unlabelled_line(result: dict[str, Any]) -> str:
    """One line on files outside any label folder (reported, not indexed), or ``""``."""
    n = result["summary"].get("unlabelled_files", 0)
    if not n:
        return ""
    examples = ", ".join(result.get("unlabelled_examples", []))
    return (f"not indexed (outside any real/fake label folder): {n} file(s), e.g. {examples} "
            "(listed under `unlabelled` in the report)")
