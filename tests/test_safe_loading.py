"""Safe loading: bundles are safetensors + JSON, user checkpoints load with weights_only=True,
no remote code runs, and NaN/inf features stop training before any bundle is written.

The malicious checkpoints here are real pickles whose payload would create a marker file when
unpickled; the tests check both that loading is refused and that the payload never ran.
"""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nsnet.backbones.availability import ModelUnavailable
from nsnet.backbones.blip import load_blip
from nsnet.backbones.clip import TINY_NAME, _register_tiny, load_clip
from nsnet.data.manifest import read_manifest
from nsnet.heads.bundle import CONFIG, WEIGHTS, load_bundle
from nsnet.heads.train_stage import run_train
from nsnet.heads.training_loop import TrainingDiverged
from nsnet.stages.cli import main
from tests.conftest import corrupt_feature, tiny_params, tiny_raw, write_params


class Payload:
    """Unpickling this calls ``Path(marker).touch()``: arbitrary code, if it ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def evil_checkpoint(path: Path, marker: Path, state: dict | None = None) -> Path:
    torch.save({"state_dict": state or {}, "extra": Payload(marker)}, path)
    return path


def test_payload_really_runs_under_full_unpickling(tmp_path):
    """Control: the payload is live, so the refusals below are meaningful."""
    marker = tmp_path / "pwned"
    ckpt = evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_clip_checkpoint_with_arbitrary_object_is_refused(tmp_path):
    _register_tiny()
    good = load_clip("tiny", "", "cpu")
    state = {k: v.clone() for k, v in good.model.state_dict().items()}
    plain = tmp_path / "tiny_weights.pt"
    torch.save(state, plain)
    loaded = load_clip(TINY_NAME, str(plain), "cpu")  # a real open_clip arch + a user file
    assert loaded.provenance["weights"] == "file:tiny_weights.pt"
    x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    torch.testing.assert_close(loaded.encode_images(x), good.encode_images(x))
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker, state)
    with pytest.raises(ModelUnavailable, match="Weights only load failed|weights_only"):
        load_clip(TINY_NAME, str(evil), "cpu")
    assert not marker.exists()


def test_blip_folder_pickle_and_remote_code_are_refused(tmp_path):
    tiny = load_blip("tiny", "cpu")
    folder = tmp_path / "blip"
    tiny.model.save_pretrained(folder)
    tiny.processor.save_pretrained(folder)
    for f in folder.glob("*.safetensors*"):  # keep only a pickle (.bin) checkpoint
        f.unlink()
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")
    assert load_blip(str(folder), "cpu").provenance["blip_revision"] == "local"  # control
    marker = tmp_path / "pwned"
    evil_checkpoint(folder / "pytorch_model.bin", marker, tiny.model.state_dict())
    load_blip.cache_clear()
    with pytest.raises(ModelUnavailable):
        load_blip(str(folder), "cpu")
    assert not marker.exists()
    # A config asking for custom modelling code: refused, the code never imported.
    remote = tmp_path / "remote"
    remote.mkdir()
    code_marker = tmp_path / "code-ran"
    (remote / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(code_marker)!r}).touch()\n"
        "from transformers import PreTrainedModel\nclass Evil(PreTrainedModel):\n    pass\n")
    (remote / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["Evil"],
        "auto_map": {"AutoConfig": "modeling_evil.Evil", "AutoModel": "modeling_evil.Evil"}}))
    with pytest.raises(ModelUnavailable):
        load_blip(str(remote), "cpu")
    assert not code_marker.exists()


def test_bundle_is_safetensors_and_json_and_ignores_pickles(tmp_path, built_cache):
    model_dir = tmp_path / "model"
    params = tiny_params(built_cache.params.data.roots[0].path, train={"epochs": 1})
    run_train(params, built_cache.manifest, built_cache.features, model_dir, tmp_path / "l.csv")
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([CONFIG, WEIGHTS])
    json.loads((model_dir / CONFIG).read_text())
    with open(model_dir / WEIGHTS, "rb") as fh:  # safetensors: u64 header length + JSON
        n = int.from_bytes(fh.read(8), "little")
        assert json.loads(fh.read(n))
    marker = tmp_path / "pwned"
    evil_checkpoint(model_dir / "pytorch_model.bin", marker)  # a stray pickle is never read
    model, config = load_bundle(model_dir)
    assert config.head.name == params.train.head
    evil_checkpoint(model_dir / WEIGHTS, marker)  # a pickle in place of the weights: refused
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        load_bundle(model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("value,dataset", [(np.nan, "image:0"), (np.inf, "text")])
def test_nonfinite_features_stop_training_without_a_bundle(tmp_path, built_cache, value,
                                                           dataset):
    work = built_cache.copy_to(tmp_path / "w")
    rows = read_manifest(work.manifest, only_ok=True)
    row = int(np.flatnonzero(rows["split"].to_numpy() == "train")[0])
    corrupt_feature(work.features, built_cache.params, dataset, rows["id"].iloc[row], 5, value)
    write_params(work.workdir / "params.yaml", tiny_raw(built_cache.params.data.roots[0].path))
    model_dir = work.workdir / "models" / "detector"
    res = CliRunner().invoke(main, ["train", "--params", str(work.workdir / "params.yaml"),
                                    "--manifest", str(work.manifest), "--features",
                                    str(work.features), "--out", str(model_dir), "--log",
                                    str(tmp_path / "log.csv")])
    assert res.exit_code == 1, res.output
    assert "TrainingDiverged" in res.output and "NaN/inf" in res.output
    assert not model_dir.exists()


def test_training_diverged_is_raised_by_fit(tmp_path, built_cache):
    from nsnet.extraction.cached_features import load_features, select
    from nsnet.heads.training_loop import fit

    fs = load_features(built_cache.params, built_cache.manifest, built_cache.features)
    train = select(fs, "train")
    train.image[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        fit("composite_probe", train, None, built_cache.params.train)
