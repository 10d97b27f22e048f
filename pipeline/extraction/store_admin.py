"""Looking after the feature store: what it holds, what the params use, what can go.

``store_table`` lists every part directory with its settings (``key=value``), rows, bytes and
whether the current params read it; ``unused_parts`` are the directories no current setting reads
(settings changed, an old code version, a degradation dropped). Nothing is ever deleted
implicitly: ``nsnet cache --gc`` is a dry run unless ``--yes`` is given.

``migrate_legacy`` converts a cache of the previous layout (``selections.h5``,
``captions.parquet``, ``embeddings.h5`` and ``views/<degradation>/``, one file per part for
the whole image set) into segments without recomputing: its rows are already keyed by image
id. A legacy part is converted when the settings it records equal the current ones; the
others are left for ``nsnet extract`` to recompute, and the report says which and why.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow.parquet as pq

from nsnet.cache_store import FeatureStore, decode_ids
from nsnet.config import Params
from nsnet.extraction.settings import ExtractSettings, image_kind
from nsnet.provenance import base_provenance

LEGACY_FILES = ("selections.h5", "captions.parquet", "embeddings.h5")
WIDTH = 120  # the listing's columns at most


@dataclass(frozen=True)
class PartRow:
    """One line of ``nsnet cache``."""

    part: str
    key: str
    path: Path
    rows: int
    bytes: int
    used: bool
    description: str


def used_keys(params: Params) -> set[str]:
    """``<part>/<key>`` of every part the current params read or write."""
    settings = ExtractSettings.from_params(params)
    treatments = {"", settings.train_reencode, *settings.degradations}
    return {p.relpath for t in treatments for p in settings.parts(t).by_kind().values()}


# The method's fixed choices, recorded in a selection's or caption's settings: one value in
# every store (the code fingerprint covers them), so the listing leaves them out.
FIXED = frozenset({"luma", "entropy", "order", "fill", "decoding"})


def describe(settings: dict[str, Any]) -> str:
    """A part's settings as ``key=value`` pairs: the treatment first (none: ``treatment=none``),
    the code fingerprint last, nested settings by their dotted path as in params.yaml
    (``clip.arch=tiny``) in the order recorded."""
    pairs = [(k, v) for k, v in _flatten(settings) if k.split(".")[-1] not in FIXED]
    pairs.sort(key=lambda kv: (kv[0] != "treatment") + (kv[0] == "code"))  # stable
    return " ".join(f"{k}={'none' if k == 'treatment' and not v else _value(v)}"
                    for k, v in pairs)


def _flatten(settings: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in settings.items():
        out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def _value(v: Any) -> str:
    """One setting's value as one word: lists joined by commas, a mapping as ``k=v,k=v``,
    nothing as ``-``."""
    if isinstance(v, dict):
        return ",".join(f"{k}={_value(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list | tuple):
        return ",".join(_value(x) for x in v) or "-"
    text = "-" if v is None or v == "" else str(v)
    return text.replace(" ", "_")


def store_table(params: Params, store: str | Path) -> list[PartRow]:
    used = used_keys(params)
    out = []
    for d in FeatureStore(store).describe():
        settings = d["info"].get("settings", {})
        out.append(PartRow(d["part"], d["key"], d["path"], d["rows"], d["bytes"],
                           f"{d['part']}/{d['key']}" in used, describe(settings)))
    return out


def unused_parts(params: Params, store: str | Path) -> list[PartRow]:
    return [r for r in store_table(params, store) if not r.used]


def format_store_table(rows: list[PartRow], width: int = WIDTH) -> str:
    """The listing: one row per part, its settings wrapped under their own column (between
    pairs, never inside one) so that no line is longer than ``width``."""
    if not rows:
        return "the store is empty"
    head = ("part", "key", "rows", "MB", "used")
    cells = [(r.part, r.key, str(r.rows), f"{r.bytes / 1e6:.2f}", "yes" if r.used else "no")
             for r in rows]
    w = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]

    def line(c: tuple[str, ...]) -> str:
        return (f"{c[0]:<{w[0]}}  {c[1]:<{w[1]}}  {c[2]:>{w[2]}}  {c[3]:>{w[3]}}  "
                f"{c[4]:<{w[4]}}  ")

    indent = len(line(head))
    lines = [line(head) + "settings"]
    for r, c in zip(rows, cells, strict=True):
        lines.append(wrapped(r.description, line(c), " " * indent, width))
    used = sum(r.bytes for r in rows if r.used) / 1e6
    unused = sum(r.bytes for r in rows if not r.used) / 1e6
    lines.append(f"{len(rows)} parts: {used:.1f} MB used by the current params, "
                 f"{unused:.1f} MB not (`nsnet cache --gc` lists what it would remove)")
    return "\n".join(lines)


def wrapped(text: str, first: str = "", indent: str = "    ", width: int = WIDTH) -> str:
    """``first`` + ``text`` in lines of at most ``width`` columns, broken between words and
    continued after ``indent`` (``first`` and ``indent`` of 100 columns or less); a word too
    long for a line of its own is cut."""
    room = max(width - max(len(first), len(indent)), 20)
    body = textwrap.wrap(text, room, break_on_hyphens=False) or [""]
    return "\n".join((first if i == 0 else indent) + line for i, line in enumerate(body))


def collect_garbage(params: Params, store: str | Path, delete: bool) -> list[PartRow]:
    """The unused parts; removed from disk only when ``delete``."""
    rows = unused_parts(params, store)
    if delete:
        fs = FeatureStore(store)
        for r in rows:
            fs.remove(r.path)
        fs.clean_tmp(older_than_s=0)
    return rows


# ----------------------------------------------------------------------------- migration


def has_legacy(cache_dir: str | Path) -> bool:
    cache_dir = Path(cache_dir)
    return any((cache_dir / f).exists() for f in LEGACY_FILES)


def migrate_legacy(params: Params, manifest_rows: Any, cache_dir: str | Path,
                   store: str | Path) -> list[str]:
    """Convert the legacy files under ``cache_dir`` (and ``cache_dir/views/*``) into segments
    of ``store``; return one line per legacy part (converted, or why not)."""
    settings = ExtractSettings.from_params(params)
    fs = FeatureStore(store)
    cache_dir = Path(cache_dir)
    report: list[str] = []
    splits = dict(zip(manifest_rows["id"], manifest_rows["split"], strict=True))
    sets = [(cache_dir, "")]
    views = cache_dir / "views"
    if views.is_dir():
        sets += [(p, p.name) for p in sorted(views.iterdir()) if p.is_dir()]
    for folder, degradation in sets:
        if not has_legacy(folder):
            continue
        report += _migrate_set(settings, fs, folder, degradation, splits)
    return report


def _treatments(settings: ExtractSettings, ids: list[str], degradation: str,
                splits: dict[str, str]) -> np.ndarray:
    if degradation:
        return np.full(len(ids), degradation, dtype=object)
    return np.asarray([settings.treatment(splits.get(i, "test")) for i in ids], dtype=object)


def _migrate_set(settings: ExtractSettings, fs: FeatureStore, folder: Path, degradation: str,
                 splits: dict[str, str]) -> list[str]:
    where = f"{folder}{' (' + degradation + ')' if degradation else ''}"
    out: list[str] = []
    legacy = _read_legacy(folder)
    if degradation and degradation not in settings.degradations:
        return [f"{where}: not converted: {degradation} is not in protocol.degradations"]
    why_not = {name: _mismatch(settings, name, req, degradation)
               for name, (_, _, req) in legacy.items()}
    for name, base in (("image", "selections"), ("text", "captions")):
        if name in why_not and not why_not[name] and why_not.get(base, "missing"):
            why_not[name] = f"made from {base} that are not converted"
    for part_name, (ids, arrays, request) in legacy.items():
        why = why_not[part_name]
        if why:
            out.append(f"{where} {part_name}: not converted ({why}); `nsnet extract` "
                       "recomputes it")
            continue
        treats = _treatments(settings, ids, degradation, splits)
        if settings.train_reencode and not degradation:
            made = (request.get("train_reencode") or {}).get("name", "")
            if made != settings.train_reencode:
                out.append(f"{where} {part_name}: not converted (train_reencode differs)")
                continue
        for treatment in sorted(set(treats)):
            pick = np.flatnonzero(treats == treatment)
            parts = settings.parts(treatment)
            for kind, arrs in _split_kinds(part_name, arrays, parts).items():
                part = parts.by_kind()[kind]
                prov = {**base_provenance(), **settings.provenance(), "stage": "migrate",
                        "migrated_from": str(folder), "legacy_request": request}
                fs.part(part).write_segment([ids[i] for i in pick],
                                            {k: v[pick] for k, v in arrs.items()}, prov)
        out.append(f"{where} {part_name}: converted {len(ids)} rows")
    return out


def _split_kinds(part_name: str, arrays: dict[str, np.ndarray], parts: Any
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Legacy datasets -> new kinds (an (n, K, d) image array becomes K image parts)."""
    if part_name == "selections":
        return {"selection": {"cells": arrays["cells"], "entropy": arrays["entropy"]}}
    if part_name == "captions":
        return {"caption": {"caption": arrays["caption"]}}
    if part_name == "text":
        return {"text": {"emb": arrays["text"]}}
    image = arrays["image"]
    if image.ndim == 2:
        image = image[:, None]
    views = sum(image_kind(k) in parts.kinds for k in range(image.shape[1]))
    return {image_kind(k): {"emb": image[:, k]} for k in range(views)}


def _read_legacy(folder: Path) -> dict[str, tuple[list[str], dict[str, np.ndarray], dict]]:
    out: dict[str, tuple[list[str], dict[str, np.ndarray], dict]] = {}
    sel = folder / "selections.h5"
    if sel.exists():
        with h5py.File(sel, "r") as f:
            req = json.loads(f.attrs.get("requests", "{}")).get("selections", {})
            out["selections"] = (decode_ids(f["ids"][:]),
                                 {"cells": f["cells"][:], "entropy": f["entropy"][:]}, req)
    cap = folder / "captions.parquet"
    if cap.exists():
        table = pq.read_table(cap)
        meta = json.loads((table.schema.metadata or {}).get(b"nsnet", b"{}"))
        out["captions"] = (table.column("id").to_pylist(),
                           {"caption": np.asarray(table.column("caption").to_pylist(),
                                                  dtype=object)}, meta.get("request", {}))
    emb = folder / "embeddings.h5"
    if emb.exists():
        with h5py.File(emb, "r") as f:
            reqs = json.loads(f.attrs.get("requests", "{}"))
            ids = decode_ids(f["ids"][:])
            out["image"] = (ids, {"image": f["image"][:]}, reqs.get("image", {}))
            out["text"] = (ids, {"text": f["text"][:]}, reqs.get("text", {}))
    return out


def _mismatch(settings: ExtractSettings, part_name: str, req: dict[str, Any],
              degradation: str) -> str:
    """Why a legacy part does not hold what the current settings ask for ("" if it does)."""
    want: dict[str, Any] = {}
    if part_name == "selections":
        want = {"patch_spec": settings.patches.as_dict(), "degradation": degradation}
    elif part_name == "captions":
        want = {"blip_model": settings.caption.model,
                "max_new_tokens": settings.caption.max_new_tokens, "precision": settings.precision,
                "degradation": degradation}
    elif part_name in ("image", "text"):
        want = {"clip_arch": settings.clip.arch, "clip_pretrained": settings.clip.pretrained,
                "precision": settings.precision}
    if not req:
        return "it records no request"
    diffs = [f"{k} {_said(req.get(k))} != {_said(v)}" for k, v in want.items()
             if req.get(k) != v]
    return "; ".join(diffs)


def _said(v: Any) -> str:
    """A setting in a message: a mapping as ``k=v,k=v``, anything else as Python writes it."""
    return _value(v) if isinstance(v, dict) else repr(v)
