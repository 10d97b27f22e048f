"""Shared fixtures: a small simulated image set, tiny-backbone params and a built cache.

Everything runs the real code on real files with the built-in tiny backbones (random weights,
fixed seeds); nothing we own is mocked.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import Params, params_from_dict
from pipeline.data.demo_data import DEMO_OVERRIDES, make_demo_images

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network


def tiny_raw(data_root: str | Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The project's params.yaml with the demo's tiny overrides, small batches and ``data_root``.

    Keyword arguments update whole sections, e.g. ``train={"epochs": 3}``.
    """
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in DEMO_OVERRIDES.items():
        raw.setdefault(section, {}).update(values)
    raw["data"]["roots"] = [str(data_root)]
    raw["data"]["num_workers"] = 0
    raw["compute"]["shard_size"] = 16
    raw["train"].update({"epochs": 5, "batch_size": 32})
    raw["protocol"] = {"train_sources": [], "test_sources": [], "degradations": []}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def tiny_params(data_root: str | Path, **sections: dict[str, Any]) -> Params:
    return params_from_dict(tiny_raw(data_root, **sections))


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real/fake folder: 24 real crops and 12 per simulated generator (128 px)."""
    root = tmp_path_factory.mktemp("demo") / "images"
    make_demo_images(root, n_real=24, n_fake_each=12, size=128, seed=1)
    return root


@dataclass
class BuiltCache:
    """A cache built once per session by the real stages; treat it as read-only."""

    workdir: Path
    params: Params
    manifest: Path
    selections: Path
    captions: Path
    embeddings: Path

    def copy_to(self, dest: Path) -> BuiltCache:
        shutil.copytree(self.workdir, dest)
        return BuiltCache(dest, self.params, *(dest / "cache" / p.name for p in
                                                (self.manifest, self.selections, self.captions,
                                                 self.embeddings)))

    @property
    def outputs(self) -> Any:
        from pipeline.extraction.extract_stage import Outputs

        return Outputs.at(self.selections, self.captions, self.embeddings)


def build_cache(workdir: Path, params: Params) -> BuiltCache:
    from pipeline.data.index_stage import build_index
    from pipeline.extraction.extract_stage import Outputs, run_extract

    cache = workdir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / "manifest.parquet"
    build_index(params, manifest, cache / "index_report.json")
    out = Outputs.at(cache / "selections.h5", cache / "captions.parquet", cache / "embeddings.h5")
    run_extract(params, manifest, out, cache)
    return BuiltCache(workdir, params, manifest, out.selections, out.captions, out.embeddings)


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory: pytest.TempPathFactory, demo_images: Path) -> BuiltCache:
    workdir = tmp_path_factory.mktemp("built")
    return build_cache(workdir, tiny_params(demo_images))
