"""Bundles round-trip exactly, and weights that do not belong to their config are refused."""

import pytest
import torch

from pipeline.heads.bundle import CONFIG, WEIGHTS, load_bundle, save_bundle
from pipeline.heads.detectors import build_head

HP = {"hidden_dim": 16, "proj_dim": 8, "dropout": 0.0, "normalize": True}


def _config(dim: int) -> dict:
    return {"head": {"kind": "advanced", "dim": dim, "hparams": HP}}


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_head("advanced", 12, **HP).eval()
    save_bundle(tmp_path, model, _config(12))
    loaded, config = load_bundle(tmp_path)
    x, t = torch.randn(5, 12), torch.randn(5, 12)
    assert torch.equal(model(x, t).logit, loaded(x, t).logit)
    assert len(config["weights_blake2b"]) == 32


def test_weights_from_another_save_are_refused(tmp_path):
    torch.manual_seed(0)
    save_bundle(tmp_path / "a", build_head("advanced", 12, **HP), _config(12))
    save_bundle(tmp_path / "b", build_head("advanced", 12, **HP), _config(12))
    (tmp_path / "a" / WEIGHTS).write_bytes((tmp_path / "b" / WEIGHTS).read_bytes())
    assert (tmp_path / "a" / CONFIG).exists()
    with pytest.raises(ValueError, match="does not match"):
        load_bundle(tmp_path / "a")
