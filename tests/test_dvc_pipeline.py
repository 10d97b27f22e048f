"""The real `dvc` pipeline in a fresh workspace: build, up to date, train-only reruns, reports.

One workspace is built for the module (tiny demo set, tiny backbones, few epochs) and the tests
run in file order: the last one changes a train parameter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.demo import make_workspace

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("index", "patches", "caption", "embed", "train", "evaluate", "compare")
OUTS = ("cache/manifest.parquet", "cache/index_report.json", "cache/patches.h5",
        "cache/captions.parquet", "cache/embeddings.h5", "models/detector/config.json",
        "models/detector/model.safetensors", "plots/train_log.csv", "metrics/metrics.json",
        "plots/roc.csv", "plots/pr.csv", "plots/confusion.csv", "metrics/compare.json")
GIT_ID = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
          "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def _env() -> dict[str, str]:
    env = {**os.environ, **GIT_ID, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(ws: Path, *cmd: str) -> str:
    """Run a command in the workspace; fail with its output if it fails."""
    res = subprocess.run(cmd, cwd=ws, env=_env(), capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}:\n{out}"
    return out


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", out))


def skipped(out: str) -> set[str]:
    return set(re.findall(r"Stage '([\w-]+)' didn't change, skipping", out))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    ws = make_workspace(tmp_path_factory.mktemp("dvc") / "ws", ROOT, n_real=24, n_fake_each=12,
                        size=128)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update({"epochs": 2})
    assert params["train"]["lr"] != 0.0005  # the last test changes it to this value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "workspace")
    out = sh(ws, "dvc", "repro")
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "commit", "-qm", "first run")
    return ws, out


def test_repro_runs_every_stage_and_writes_every_out(workspace):
    ws, out = workspace
    assert ran(out) == set(STAGES), out
    for rel in OUTS:
        assert (ws / rel).is_file() and (ws / rel).stat().st_size > 0, rel
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    # The expensive stages depend on their own params only, never on train.*.
    for stage in ("index", "patches", "caption", "embed"):
        assert "train" not in lock["stages"][stage].get("params", {}).get("params.yaml", {})
    assert "train" in lock["stages"]["train"]["params"]["params.yaml"]


def test_second_repro_is_up_to_date(workspace):
    ws, _ = workspace
    out = sh(ws, "dvc", "repro")
    assert not ran(out), out
    assert skipped(out) == set(STAGES), out
    assert "Data and pipelines are up to date" in out
    assert "up to date" in sh(ws, "dvc", "status")
    assert sh(ws, "git", "status", "--porcelain") == ""  # nothing untracked or modified


def test_metrics_and_plots_show(workspace, tmp_path):
    ws, _ = workspace
    metrics = json.loads(sh(ws, "dvc", "metrics", "show", "--json"))
    data = metrics[""]["data"]
    test_mean = data["metrics/metrics.json"]["data"]["test"]["mean"]
    assert 0.0 <= test_mean["acc"] <= 1.0
    assert set(data["metrics/compare.json"]["data"]["heads"]) == {"ufd", "nsnet", "advanced"}
    assert "metrics/metrics.json" in sh(ws, "dvc", "metrics", "show")
    out_dir = tmp_path / "plots_html"
    sh(ws, "dvc", "plots", "show", "-o", str(out_dir))
    html = (out_dir / "index.html").read_text()
    for name in ("roc.csv", "pr.csv", "confusion.csv", "train_log.csv"):
        assert name in html, name


def test_train_param_change_reruns_only_train_evaluate_compare(workspace):
    ws, _ = workspace
    cached = {p: (ws / p).stat().st_mtime_ns for p in OUTS[:5]}
    old_model = (ws / "models/detector/model.safetensors").read_bytes()
    out = sh(ws, "dvc", "exp", "run", "-S", "train.lr=0.0005")
    assert ran(out) == {"train", "evaluate", "compare"}, out
    assert skipped(out) == {"index", "patches", "caption", "embed"}, out
    assert yaml.safe_load((ws / "params.yaml").read_text())["train"]["lr"] == 0.0005
    assert {p: (ws / p).stat().st_mtime_ns for p in OUTS[:5]} == cached  # cache untouched
    bundle = json.loads((ws / "models/detector/config.json").read_text())
    assert bundle["training"]["params"]["lr"] == 0.0005
    assert (ws / "models/detector/model.safetensors").read_bytes() != old_model
    assert "up to date" in sh(ws, "dvc", "status")
    # The experiment recorded its metrics (they are in git, not ignored).
    exps = json.loads(sh(ws, "dvc", "exp", "show", "--json"))
    revs = [r for c in exps for e in (c.get("experiments") or []) for r in e["revs"]]
    assert revs, exps
    metrics = revs[0]["data"]["metrics"]["metrics/metrics.json"]
    assert "error" not in metrics, metrics
    assert metrics["data"]["test"]["mean"]["acc"] is not None
