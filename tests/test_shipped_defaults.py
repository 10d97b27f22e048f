"""The shipped defaults run end to end: every stage of the real dvc.yaml through the real
`dvc repro`, on a few hundred generated images, with the code's defaults (= the shipped
params.yaml) where only the backbones (tiny, random: no download) and the data root differ.

Worker counts, torch threads and batch sizes stay `auto`, the training settings, decision and
protocol are the defaults: what a new user gets after pointing data.roots at their images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nsnet.data.demo_data import TINY_MODELS, make_workspace
from tests.conftest import ROOT, default_raw, workspace_params
from tests.test_dvc_pipeline import ran, sh, stages_of

VALUES = {**TINY_MODELS, "data.roots": ["data/demo"]}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.slow
def test_every_stage_runs_with_the_shipped_defaults(tmp_path: Path):
    ws = make_workspace(tmp_path / "ws", ROOT, code="link", params=workspace_params(),
                        values=VALUES, n_real=150, n_fake_each=50, size=128)
    written = _flat(yaml.safe_load((ws / "params.yaml").read_text()))
    defaults = _flat(default_raw())
    assert {k for k in defaults if written[k] != defaults[k]} == set(VALUES)
    assert written["data.num_workers"] == "auto" and written["compute.num_workers"] == "auto"
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    out = sh(ws, "dvc", "repro")
    assert ran(out) == set(stages_of(ws / "dvc.yaml")), out
    assert "audit: 300 images, headers only" in out  # > 256: the parallel header path
    assert "train: advanced on " in out and "tsne: 300 images" in out
    assert "Traceback" not in out and "Error" not in out
    for rel in ("metrics/metrics.json", "metrics/compare.json", "metrics/audit.json",
                "metrics/degradations.json", "models/detector/config.json", "plots/tsne.png"):
        assert (ws / rel).stat().st_size > 0, rel
