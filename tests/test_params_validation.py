"""params.yaml is validated up front, through the CLI: exit code 1, one message naming the key,
no traceback, and no cache file created before the error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nsnet.stages.cli import main
from tests.conftest import ROOT, tiny_raw, write_params

STAGES = ["index", "extract", "train", "evaluate"]

BAD = [  # (edit of the raw params, key the message must name, words it must contain)
    (lambda r: r["clip"].update(archh="ViT-B-32"), "clip.archh", "unknown key"),
    (lambda r: r.update(trian={"lr": 1}), "trian", "unknown key"),
    (lambda r: r["train"].update(epochs="ten"), "train.epochs", "expected an integer"),
    (lambda r: r["train"].update(epochs=2.5), "train.epochs", "expected an integer"),
    (lambda r: r["data"].update(roots="data/images"), "data.roots", "expected a list"),
    (lambda r: r["train"].update(normalize="yes"), "train.normalize", "expected true/false"),
    (lambda r: r["patches"].update(size=2), "patches.size", "out of range"),
    (lambda r: r["train"].update(lr=0), "train.lr", "out of range"),
    (lambda r: r["train"].update(lr=float("nan")), "train.lr", "not a finite number"),
    (lambda r: r["evaluate"].update(threshold=1.5), "evaluate.threshold", "out of range"),
    (lambda r: r["compute"].update(precision="fp8"), "compute.precision", "not one of"),
    (lambda r: r["compute"].update(device="gpu"), "compute.device", "not a device"),
    (lambda r: r["data"]["split"].update(train=0.9), "data.split", "sum to 1"),
]


def _workdir(tmp_path: Path, edit) -> Path:
    raw = tiny_raw(tmp_path / "images")
    edit(raw)
    write_params(tmp_path / "params.yaml", raw)
    return tmp_path


def _no_outputs(workdir: Path) -> None:
    made = [p.name for p in workdir.iterdir() if p.name not in ("params.yaml",)]
    assert made == [], f"files created before validation: {made}"


@pytest.mark.parametrize("edit,key,words", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_params_refused_by_index(tmp_path, monkeypatch, edit, key, words):
    monkeypatch.chdir(_workdir(tmp_path, edit))
    result = CliRunner().invoke(main, ["index"])
    assert result.exit_code == 1
    assert "ParamsError" in result.output and key in result.output and words in result.output
    assert "Traceback" not in result.output
    _no_outputs(tmp_path)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_validates_before_work(tmp_path, monkeypatch, stage):
    monkeypatch.chdir(_workdir(tmp_path, lambda r: r["caption"].update(max_new_tokens=0)))
    result = CliRunner().invoke(main, [stage])
    assert result.exit_code == 1, result.output
    assert "caption.max_new_tokens: 0 is out of range" in result.output
    _no_outputs(tmp_path)


def test_bad_override_names_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(_workdir(tmp_path, lambda r: None))
    result = CliRunner().invoke(main, ["train", "--set", "train.batch_size=1"])
    assert result.exit_code == 1 and "train.batch_size: 1 is out of range" in result.output
    result = CliRunner().invoke(main, ["index", "--set", "data.nope=1"])
    assert result.exit_code == 1 and "unknown key data.nope" in result.output
    _no_outputs(tmp_path)


def test_invalid_yaml_is_one_clear_message(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("train: {epochs: [1,\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["index"])
    assert result.exit_code == 1 and "not valid YAML" in result.output
    _no_outputs(tmp_path)


def test_real_subprocess_exit_code_and_stderr(tmp_path):
    """The installed console entry point, as a user runs it."""
    raw = tiny_raw(tmp_path / "images")
    raw["train"]["dropout"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "nsnet.stages.cli", "index"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "train.dropout: 1.0 is out of range (must be <= 0.99)" in proc.stderr
    assert "Traceback" not in proc.stderr
    _no_outputs(tmp_path)
