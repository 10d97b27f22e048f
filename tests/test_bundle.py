"""Bundles round-trip exactly, and weights that do not belong to their config are refused."""

import re

import pytest
import torch
from PIL import Image

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


# ----------------------------------------------------------------------------- untrusted configs

FULL = {"head": {"kind": "advanced", "dim": 12, "hparams": HP}, "threshold": 0.5,
        "uncertain_band": 0.05,
        "decision": {"threshold": 0.5, "rule": "0.5", "calibration": "none", "scale": 1.0,
                     "shift": 0.0},
        "backbones": {"clip": {"clip_arch": "tiny", "clip_pretrained": ""},
                      "blip": {"model": "tiny", "max_new_tokens": 8},
                      "patches": {"size": 32, "n_low": 24, "n_high": 25}}}


def _edit(config: dict, dotted: str, value) -> dict:
    import copy

    out = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()
BROKEN = [
    ("list", None, [1, 2], "top level: expected a mapping"),
    ("no head", "head", DELETE, "head: missing"),
    ("head kind", "head.kind", "resnet", "head.kind"),
    ("string dim", "head.dim", "768", "head.dim: expected a positive integer"),
    ("string hparam", "head.hparams.hidden_dim", "16", "head.hparams.hidden_dim"),
    ("unknown hparam", "head.hparams.depth", 3, "head.hparams.depth: unknown"),
    ("nan threshold", "threshold", float("nan"), "threshold"),
    ("threshold > 1", "threshold", 1.5, "threshold: 1.5 is out of range"),
    ("decision threshold > 1", "decision.threshold", 2.0, "decision.threshold"),
    ("negative band", "uncertain_band", -0.1, "uncertain_band"),
    ("string threshold", "threshold", "val_acc", "threshold: expected a finite number"),
    ("nan calibration scale", "decision.scale", float("nan"), "decision.scale"),
    ("unknown calibration", "decision.calibration", "isotonic", "decision.calibration"),
    ("zero patch size", "backbones.patches.size", 0, "backbones.patches.size"),
    ("string patch count", "backbones.patches.n_low", "24", "backbones.patches.n_low"),
    ("not a grid", "backbones.patches.n_low", 20, "not a square grid"),
    ("no blip", "backbones.blip", DELETE, "backbones.blip: missing"),
    ("no weights hash", "weights_blake2b", DELETE, "weights_blake2b: missing"),
    ("format", "format_version", 99, "format_version"),
]


@pytest.mark.parametrize("what, key, value, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_is_refused_naming_file_and_key(tmp_path, what, key, value, message):
    import json

    from click.testing import CliRunner

    from stages.cli import main

    save_bundle(tmp_path, build_head("advanced", 12, **HP), FULL)
    config = json.loads((tmp_path / CONFIG).read_text())
    load_bundle(tmp_path)  # the intact bundle loads
    config = value if key is None else _edit(config, key, value)
    (tmp_path / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_bundle(tmp_path)
    assert str(tmp_path / CONFIG) in str(err.value)
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(image)
    (tmp_path / "defaults.yaml").write_text("{}\n")  # not the user's params.yaml
    res = CliRunner().invoke(main, ["predict", str(image), "--model", str(tmp_path),
                                    "--params", str(tmp_path / "defaults.yaml")])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output


def test_config_that_is_not_json_is_refused(tmp_path):
    save_bundle(tmp_path, build_head("advanced", 12, **HP), FULL)
    (tmp_path / CONFIG).write_bytes(b"\xff\xfe binary")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bundle(tmp_path)


def test_weights_that_do_not_fit_the_head_are_one_message(tmp_path):
    import json

    from pipeline.heads.bundle import _digest

    save_bundle(tmp_path, build_head("advanced", 12, **HP), FULL)
    save_bundle(tmp_path / "other", build_head("advanced", 16, **HP), FULL)
    blob = (tmp_path / "other" / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(blob)
    config = json.loads((tmp_path / CONFIG).read_text())
    config["weights_blake2b"] = _digest(blob)  # consistent hash, wrong shapes
    (tmp_path / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit the head"):
        load_bundle(tmp_path)
