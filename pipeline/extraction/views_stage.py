"""Degraded test views: the test split re-run through ``extract`` once per degradation, cached
under ``cache/views/<name>/{manifest.parquet,selections.h5,captions.parquet,embeddings.h5}``.

Rows keep the ids of the clean images (so each composite uses the same seeded patch order as
the clean one); the degradation (``pipeline.data.degradations``) is applied right after the one
decode of each test image. A view whose outputs already match the current manifest and
settings is reused, so adding a name to ``protocol.degradations`` computes only that view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.cache_store import write_table
from pipeline.config import Params
from pipeline.data.degradations import parse
from pipeline.data.manifest import OK, read_manifest
from pipeline.extraction.extract_stage import PARTS, Outputs, current_parts, requests, run_extract
from pipeline.provenance import fingerprint

FILES = ("manifest.parquet", "selections.h5", "captions.parquet", "embeddings.h5")


@dataclass(frozen=True)
class ViewPaths:
    """The cached files of one degraded view."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def outputs(self) -> Outputs:
        return Outputs.at(self.root / "selections.h5", self.root / "captions.parquet",
                          self.root / "embeddings.h5")

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings.h5"


def view_paths(views_dir: str | Path, name: str) -> ViewPaths:
    return ViewPaths(Path(views_dir) / name)


def view_rows(manifest: str | Path) -> pd.DataFrame:
    """The usable rows of the test split, in manifest order."""
    df = read_manifest(manifest)
    return df[(df["status"] == OK) & (df["split"] == "test")].reset_index(drop=True)


def is_current(params: Params, name: str, paths: ViewPaths, rows: pd.DataFrame) -> bool:
    """Every part of the view was made from these rows with the current settings."""
    ids = rows["id"].tolist()
    return current_parts(paths.outputs, requests(params, ids, name), ids) == set(PARTS)


def run_view(params: Params, name: str, manifest: str | Path, views_dir: str | Path,
             scheduler: str = "", force: bool = False) -> dict[str, Any]:
    """Compute (or reuse) one degraded view of the test split; return a short summary.

    Each test image is decoded once, degraded, and fed to selection, BLIP and CLIP."""
    parse(name)  # validate before any work
    rows = view_rows(manifest)
    if rows.empty:
        raise ValueError(f"{manifest} has no usable test images to degrade; check data.roots "
                         "roles and data.split")
    paths = view_paths(views_dir, name)
    if force:
        for f in FILES:
            (paths.root / f).unlink(missing_ok=True)
    elif is_current(params, name, paths, rows):
        return {"view": name, "images": len(rows), "reused": True}
    paths.root.mkdir(parents=True, exist_ok=True)
    write_table(paths.manifest, rows, {"stage": "views", "view_of": str(manifest),
                                       "rows": fingerprint(rows["id"].tolist()),
                                       "n_rows": len(rows)})
    line = run_extract(params, paths.manifest, paths.outputs, paths.root, scheduler,
                       degradation=name).line()
    return {"view": name, "images": len(rows), "reused": False, "log": [line]}


def run_views(params: Params, manifest: str | Path, views_dir: str | Path,
              scheduler: str = "", force: bool = False) -> list[dict[str, Any]]:
    """Every view named in ``protocol.degradations`` (``views_dir`` exists even with none)."""
    Path(views_dir).mkdir(parents=True, exist_ok=True)
    return [run_view(params, name, manifest, views_dir, scheduler, force)
            for name in params.protocol.degradations]
