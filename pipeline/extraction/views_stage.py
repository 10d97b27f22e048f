"""Degraded test views: the test split re-run through patches -> caption -> embed once per
degradation, cached under ``cache/views/<name>/{manifest.parquet,patches.h5,captions.parquet,
embeddings.h5}``.

Rows keep the ids of the clean images (so each composite uses the same seeded patch order as
the clean one); the degradation (``pipeline.data.degradations``) is applied right after
decoding. A view
whose outputs already match the current manifest and settings is reused, so adding a name to
``protocol.degradations`` computes only that view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import pandas as pd

from pipeline.cache_store import h5_provenance, table_provenance, write_table
from pipeline.config import Params
from pipeline.data.degradations import parse
from pipeline.data.manifest import OK, read_manifest
from pipeline.extraction.extract_stages import clip_request, run_caption, run_embed, run_patches
from pipeline.extraction.patch_selection import PatchSpec
from pipeline.provenance import fingerprint

FILES = ("manifest.parquet", "patches.h5", "captions.parquet", "embeddings.h5")


@dataclass(frozen=True)
class ViewPaths:
    """The four cached files of one degraded view."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def patches(self) -> Path:
        return self.root / "patches.h5"

    @property
    def captions(self) -> Path:
        return self.root / "captions.parquet"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings.h5"


def view_paths(views_dir: str | Path, name: str) -> ViewPaths:
    return ViewPaths(Path(views_dir) / name)


def view_rows(manifest: str | Path) -> pd.DataFrame:
    """The usable rows of the test split, in manifest order."""
    df = read_manifest(manifest)
    return df[(df["status"] == OK) & (df["split"] == "test")].reset_index(drop=True)


def _expected(params: Params, name: str, rows: pd.DataFrame) -> dict[str, Any]:
    return {"degradation": name, "rows": fingerprint(rows["id"].tolist()),
            "patch_spec": PatchSpec(**params.patches.__dict__).as_dict(),
            "blip_model": params.caption.model, "max_new_tokens": params.caption.max_new_tokens,
            **clip_request(params)}


def _found(paths: ViewPaths, clip_keys: list[str]) -> dict[str, Any] | None:
    """What an existing view was computed with, or None when any file is missing."""
    if not all((paths.root / f).exists() for f in FILES):
        return None
    try:
        patch, cap, emb = (h5_provenance(paths.patches), table_provenance(paths.captions),
                           h5_provenance(paths.embeddings))
        view = table_provenance(paths.manifest)
        with h5py.File(paths.embeddings, "r") as f:
            complete = f["image"].shape[0] == view.get("n_rows")
    except (OSError, KeyError, ValueError):
        return None
    if not complete or patch.get("degradation") != cap.get("degradation"):
        return None
    return {"degradation": patch.get("degradation"), "rows": view.get("rows"),
            "patch_spec": patch.get("patch_spec"), "blip_model": cap.get("blip_model"),
            "max_new_tokens": cap.get("max_new_tokens"),
            **{k: emb.get(k) for k in clip_keys}}


def is_current(params: Params, name: str, paths: ViewPaths, rows: pd.DataFrame) -> bool:
    return _found(paths, list(clip_request(params))) == _expected(params, name, rows)


def run_view(params: Params, name: str, manifest: str | Path, views_dir: str | Path,
             scheduler: str = "", force: bool = False) -> dict[str, Any]:
    """Compute (or reuse) one degraded view of the test split; return a short summary."""
    parse(name)  # validate before any work
    rows = view_rows(manifest)
    if rows.empty:
        raise ValueError(f"{manifest} has no usable test images to degrade; check data.roots "
                         "roles and data.split")
    paths = view_paths(views_dir, name)
    if not force and is_current(params, name, paths, rows):
        return {"view": name, "images": len(rows), "reused": True}
    paths.root.mkdir(parents=True, exist_ok=True)
    write_table(paths.manifest, rows, {"stage": "views", "view_of": str(manifest),
                                       "rows": fingerprint(rows["id"].tolist()),
                                       "n_rows": len(rows)})
    lines = [
        run_patches(params, paths.manifest, paths.patches, paths.root, scheduler,
                    degradation=name).line(),
        run_caption(params, paths.manifest, paths.captions, paths.root, scheduler,
                    degradation=name).line(),
        run_embed(params, paths.manifest, paths.patches, paths.captions, paths.embeddings,
                  paths.root, scheduler).line(),
    ]
    return {"view": name, "images": len(rows), "reused": False, "log": lines}


def run_views(params: Params, manifest: str | Path, views_dir: str | Path,
              scheduler: str = "", force: bool = False) -> list[dict[str, Any]]:
    """Every view named in ``protocol.degradations`` (``views_dir`` exists even with none)."""
    Path(views_dir).mkdir(parents=True, exist_ok=True)
    return [run_view(params, name, manifest, views_dir, scheduler, force)
            for name in params.protocol.degradations]
