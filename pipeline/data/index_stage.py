"""The ``index`` stage: scan image roots into ``cache/manifest.parquet``.

One row per image file: stable content id, path, label, source, deterministic split, size,
mode, and a status/error column. Unreadable files are kept with a reason (never silently
dropped); exact duplicate contents are reported, and contents found under both labels are
excluded as label conflicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pipeline import runtime
from pipeline.atomic import write_json
from pipeline.cache_store import write_table
from pipeline.config import Params
from pipeline.data.images import (
    UNSUPPORTED,
    ImageError,
    decode_data,
    display_path,
    read_bytes,
    unsupported_reason,
)
from pipeline.data.layouts import Entry, LayoutError, WalkError, iter_entries
from pipeline.data.manifest import MANIFEST_COLUMNS, OK, content_id, split_for
from pipeline.data.skip_lists import SKIP_STATUS, SkipLists, read_skip_lists
from pipeline.provenance import base_provenance


class StrictModeError(RuntimeError):
    """``--strict`` was given and some images were skipped."""


@dataclass(frozen=True)
class _Probe:
    path: str
    max_pixels: int
    min_side: int


def _probe(job: _Probe) -> dict[str, Any]:
    """Hash and fully decode one file (runs in a worker process)."""
    row: dict[str, Any] = {"id": None, "width": -1, "height": -1, "mode": "", "format": "",
                           "bytes": -1, "status": OK, "error": ""}
    try:
        reason = unsupported_reason(job.path)
        if reason:
            raise ImageError(UNSUPPORTED, reason)
        data = read_bytes(job.path)
        row["bytes"] = len(data)
        row["id"] = content_id(data)
        _, info = decode_data(data, job.path, job.max_pixels)
        row.update(width=info.width, height=info.height, mode=info.mode, format=info.format)
        if min(info.width, info.height) < job.min_side:
            row.update(status="too_small",
                       error=f"{info.width}x{info.height} is smaller than one "
                             f"{job.min_side}x{job.min_side} patch")
    except ImageError as exc:
        row.update(status=exc.reason, error=exc.detail)
    if row["id"] is None:  # unreadable: derive a stable id from the path instead
        row["id"] = "path-" + hashlib.blake2b(os.fsencode(job.path), digest_size=12).hexdigest()
    return row


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


def _root_entries(params: Params, errors: list[WalkError] | None = None
                  ) -> tuple[list[tuple[Entry, str, bool]], list[str]]:
    """(entry, role, root has a val folder) for every labelled image, plus unlabelled paths."""
    out: list[tuple[Entry, str, bool]] = []
    unlabelled: list[str] = []
    for root in params.data.roots:
        entries = list(iter_entries(root.path, root.layout or params.data.layout, unlabelled,
                                    errors))
        if not entries:
            raise LayoutError(f"no image files with a real/fake label folder found under "
                              f"{root.path}")
        has_val = any(e.split == "val" for e in entries)
        out.extend((e, root.role, has_val) for e in entries)
    return out, unlabelled


def _listed_row(path: str, reason: str) -> dict[str, Any]:
    """The manifest row of a file named by ``data.skip_lists`` (never read or decoded)."""
    image_id = "path-" + hashlib.blake2b(os.fsencode(path), digest_size=12).hexdigest()
    return {"id": image_id, "width": -1, "height": -1, "mode": "", "format": "", "bytes": -1,
            "status": SKIP_STATUS, "error": reason}


def scan(params: Params, errors: list[WalkError] | None = None,
         skip: SkipLists | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Walk the configured roots and probe every image file; also return unlabelled paths.

    Files named by ``skip`` (``data.skip_lists``) are not probed; they get status
    ``skip_listed`` with the list file and line as the reason.
    """
    entries, unlabelled = _root_entries(params, errors)
    listed = {e.path: r for e, _, _ in entries if skip and (r := skip.reason(e.path))}
    jobs = [_Probe(e.path, params.data.max_image_pixels, params.patches.size)
            for e, _, _ in entries if e.path not in listed]
    workers = runtime.index_workers(params.data.num_workers)
    bar = tqdm(total=len(jobs), desc="index", unit="file", dynamic_ncols=True, mininterval=1.0)
    done: list[dict[str, Any]] = []
    with bar, contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 64:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            results = pool.map(_probe, jobs, chunksize=32)
        else:
            results = map(_probe, jobs)
        for probe in results:
            done.append(probe)
            bar.update(1)
    probed = iter(done)
    probes = [_listed_row(e.path, listed[e.path]) if e.path in listed else next(probed)
              for e, _, _ in entries]
    rows = []
    for (e, role, has_val), p in zip(entries, probes, strict=True):
        split = assign_split(e.split, p["id"], role, has_val, params)
        rows.append({**p, "path": _display(e.path), "path_raw": os.fsencode(e.path),
                     "label": e.label, "source": _display(e.source), "split": split})
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return df.sort_values(["path_raw"], kind="stable").reset_index(drop=True), unlabelled


def mark_duplicates(df: pd.DataFrame) -> dict[str, Any]:
    """Flag repeated contents in place; return the duplicate report."""
    ok = df["status"] == OK
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


def build_index(params: Params, out: str | Path, report: str | Path,
                strict: bool | None = None) -> dict[str, Any]:
    """Run the index stage end to end; return the summary that was also written to ``report``."""
    walk_errors: list[WalkError] = []
    skip = read_skip_lists(params.data.skip_lists)
    df, unlabelled = scan(params, walk_errors, skip)
    dup_report = mark_duplicates(df)
    summary = summarise(df)
    summary["unlabelled_files"] = len(unlabelled)
    summary["unlisted_folders"] = len(walk_errors)
    summary["skip_list_entries"] = len(skip.where)
    summary["skip_list_unmatched"] = len(skip.unmatched)
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
    write_table(out, df, provenance)
    skipped_list = [
        {"path": r.path, "status": r.status, "error": r.error} for r in skipped.itertuples()
    ]
    write_json(report, {"summary": summary, **dup_report, "skipped": skipped_list[:10000],
                        "unlabelled": [display_path(u) for u in unlabelled[:10000]],
                        "skip_list_unmatched": skip.unmatched[:10000],
                        "unlisted_folders": [w.__dict__ for w in walk_errors[:10000]],
                        "provenance": provenance})
    examples = {str(reason): [(r.path, r.error) for r in group.head(3).itertuples()]
                for reason, group in skipped.groupby("status", sort=True)}
    return {"summary": summary, **{k: len(v) for k, v in dup_report.items()},
            "skipped_examples": examples,
            "unlabelled_examples": [display_path(u) for u in unlabelled[:3]],
            "unlisted_folders": [(w.path, w.error) for w in walk_errors]}


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
