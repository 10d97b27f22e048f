"""Shared fixtures: a small simulated image set, tiny-backbone params and a built cache.

Everything runs the real code on real files with the built-in tiny backbones (random weights,
fixed seeds); nothing we own is mocked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from nsnet.config import Params, params_from_dict
from nsnet.data.demo_data import TINY_MODELS, make_demo_images

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network


def makefile_variables() -> set[str]:
    """The names the Makefile assigns (``TORCH ?=``, ``BIN :=``...)."""
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^(?:export +)?([A-Z_][A-Z0-9_]*) *[?:+]?=", text, re.MULTILINE))


# The caller's make variables never reach the tests: `make test TORCH=cpu` exports TORCH=cpu
# (and MAKEFLAGS) to pytest, and from there to every `make -n` a test runs. Dropped once here,
# so each test sees the Makefile's own defaults whatever command line started the suite.
MAKE_CALLER = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS"}
for _name in (MAKE_CALLER | makefile_variables()) - {"DVC_NO_ANALYTICS",
                                                     "HF_HUB_DISABLE_TELEMETRY"}:
    os.environ.pop(_name, None)

# ----------------------------------------------------------------------------- params.yaml guard
# The repository's params.yaml is the user's to edit (the README says so), so no test may
# depend on it: an open of it in the test process is recorded and fails the test, unless the
# test is marked `reads_repo_params` (only a validity check and the check of the names its
# comments point at are). Commands run by CliRunner in the project folder without --params
# would read it too, and are caught the same way.
REPO_PARAMS = os.path.abspath(ROOT / "params.yaml")
# One guard per process (this file is imported as `conftest` and as `tests.conftest`).
_guard = sys.__dict__.setdefault("_nsnet_repo_params_guard", {"allowed": False, "reads": []})


def _watch_params_yaml(event: str, args: tuple) -> None:
    if event != "open" or _guard["allowed"] or isinstance(args[0], int):
        return
    try:
        path = os.fsdecode(args[0])
    except TypeError:
        return
    if path.endswith("params.yaml") and os.path.abspath(path) == REPO_PARAMS:
        _guard["reads"].append(path)
        raise PermissionError(f"a test read the repository's params.yaml ({path}); use "
                              "tests.conftest.default_raw() or a copy")


if not _guard.get("hooked"):
    _guard["hooked"] = True
    sys.addaudithook(_watch_params_yaml)


@pytest.fixture(autouse=True)
def _no_repo_params_reads(request: pytest.FixtureRequest):
    """Fail a test that read the repository's params.yaml (see ``_watch_params_yaml``)."""
    _guard["allowed"] = request.node.get_closest_marker("reads_repo_params") is not None
    _guard["reads"].clear()
    yield
    reads, _guard["allowed"] = list(_guard["reads"]), False
    _guard["reads"].clear()
    assert not reads, f"this test read the repository's params.yaml: {reads}"


def require_system_packages(packages: str, present: bool) -> None:
    """Fail a test whose Debian ``packages`` are missing, saying how to get them; skip it when
    `make test SYSTEM_PACKAGES=no` opted out (that sets ``NSNET_SYSTEM_PACKAGES=no``)."""
    if present:
        return
    if os.environ.get("NSNET_SYSTEM_PACKAGES") == "no":
        pytest.skip(f"{packages} not installed and SYSTEM_PACKAGES=no: `make test` installs "
                    "them as root (apt-get) unless SYSTEM_PACKAGES=no")
    pytest.fail(f"this test needs Debian's {packages}: `make test` installs them as root "
                f"(apt-get install {packages}); `make test SYSTEM_PACKAGES=no` skips it")


# ----------------------------------------------------------------------------- scheduling
# `make test-fast` leaves out `slow` tests and these `heavy` ones: tests that need the session's
# image set or its extracted cache (tiny models run over hundreds of images first).
HEAVY_FIXTURES = frozenset({"demo_images", "built_cache"})
# `make test` spreads whole files over parallel workers (pytest-xdist, `--dist loadfile`), in
# collection order: the files holding the longest tests go first, so that no worker is left
# alone with one of them at the end. Order only; no test depends on it.
LONGEST_FIRST = ("test_docs.py", "test_incremental.py", "test_dvc_pipeline.py",
                 "test_input_zoo.py", "test_user_params.py", "test_patch_views.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files = set()
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)
        if item.get_closest_marker("slow"):
            slow_files.add(item.path.name)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) + (0 if name in slow_files else 1)

    items.sort(key=rank)  # stable: each file keeps its own order


# Small, fast settings for the tests' small image sets (on top of the tiny models).
FAST = {
    "data": {"num_workers": 0},
    "clip": {"batch_size": 64},
    "caption": {"max_new_tokens": 12, "batch_size": 32},
    "compute": {"precision": "fp32", "shard_size": 16, "num_workers": 0},
    "train": {"epochs": 5, "batch_size": 32, "lr": 1e-3, "nsnet_k": 8, "hidden_dim": 256},
}


def default_raw() -> dict[str, Any]:
    """The code's defaults as a params mapping: what the shipped params.yaml says, but never
    the user's edits to it (the tests do not read the repository's params.yaml)."""
    return json.loads(json.dumps(Params().to_dict()))


def tiny_raw(data_root: str | Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The code's defaults with the tiny models, small fast settings and ``data_root``.

    Keyword arguments update whole sections, e.g. ``train={"epochs": 3}``.
    """
    raw = default_raw()
    for key, value in TINY_MODELS.items():
        section, name = key.split(".")
        raw[section][name] = value
    for section, values in FAST.items():
        raw[section].update(values)
    raw["data"]["roots"] = [str(data_root)]
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def workspace_params() -> str:
    """A params file of the code's defaults, for ``make_workspace(params=...)`` in tests."""
    return yaml.safe_dump(default_raw(), sort_keys=False)


def fast_values() -> dict[str, Any]:
    """``FAST`` as dotted keys (``make_workspace(values=...)``)."""
    return {f"{section}.{k}": v for section, values in FAST.items() for k, v in values.items()}


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
    features: Path  # the feature store (cache/features)

    def copy_to(self, dest: Path) -> BuiltCache:
        shutil.copytree(self.workdir, dest, symlinks=True)
        return BuiltCache(dest, self.params, dest / "cache" / self.manifest.name,
                          dest / "cache" / self.features.name)


def build_cache(workdir: Path, params: Params) -> BuiltCache:
    from nsnet.data.index_stage import build_index
    from nsnet.extraction.extract_stage import run_extract

    cache = workdir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / "manifest.parquet"
    build_index(params, manifest, cache / "index_report.json")
    run_extract(params, manifest, cache / "features")
    return BuiltCache(workdir, params, manifest, cache / "features")


@pytest.fixture(scope="session")
def built_cache(tmp_path_factory: pytest.TempPathFactory, demo_images: Path) -> BuiltCache:
    workdir = tmp_path_factory.mktemp("built")
    return build_cache(workdir, tiny_params(demo_images))


def part_of(features: Path, params: Params, kind: str, treatment: str = "") -> Any:
    """The store's ``PartStore`` of work kind ``kind`` (``selection``, ``caption``,
    ``image:0``, ``text``, ...) under ``treatment``, as ``params`` define it."""
    from nsnet.cache_store import FeatureStore
    from nsnet.extraction.settings import ExtractSettings

    part = ExtractSettings.from_params(params).parts(treatment).by_kind()[kind]
    return FeatureStore(features).part(part)


def read_part(features: Path, params: Params, kind: str, ids: list[str],
              treatment: str = "") -> dict[str, Any]:
    """Every dataset of one part for ``ids``, in that order."""
    store = part_of(features, params, kind, treatment)
    return store.gather(ids, list(store.shapes()) or ["caption"])


def corrupt_feature(features: Path, params: Params, kind: str, image_id: str, column: int,
                    value: float, treatment: str = "") -> None:
    """Overwrite one value of one image's row in the segment that holds it (fault tests)."""
    import h5py
    import numpy as np

    store = part_of(features, params, kind, treatment)
    idx = store.index()
    pos = int(idx.locate(np.asarray([image_id]))[0])
    assert pos >= 0, f"{image_id} not in {store.path}"
    path = store.path / idx.segments[int(idx.segment[pos])]
    path.chmod(0o644)  # DVC may have made it read-only
    with h5py.File(path, "r+") as f:
        block = f["emb"][:]
        block[int(idx.row[pos]), column] = value
        f["emb"][...] = block
