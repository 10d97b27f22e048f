"""Bundles round-trip exactly, weights that do not belong to their config are refused, and the
config is a typed ``BundleConfig`` validated like params: format 2 is written, format 1 (nsnet
before typed bundles) still loads, any other format is refused."""

import dataclasses
import inspect
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from nsnet.config import (
    CaptionParams,
    ClipParams,
    PatchParams,
    ProtocolParams,
    TrainParams,
    params_from_dict,
)
from nsnet.heads.bundle import CONFIG, WEIGHTS, load_bundle, read_config, save_bundle
from nsnet.heads.bundle_config import (
    Backbones,
    BundleConfig,
    BundleDecision,
    CaptionFacts,
    ClipFacts,
    HeadConfig,
    HeadSettings,
    PatchesConfig,
    ViewsConfig,
)
from nsnet.heads.detectors import HPARAM_KEYS, AdvancedNSNet, NSNet
from nsnet.heads.method import build_head, method
from nsnet.heads.training_info import ClassCounts, TrainingRecord

HP = {"hidden_dim": 16, "proj_dim": 8, "dropout": 0.0, "normalize": True}
FORMAT_1 = Path(__file__).parent / "fixtures" / "bundle_format1"


def _config(dim: int) -> BundleConfig:
    return BundleConfig(head=HeadConfig("advanced", dim, train=HeadSettings(**HP)))


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_head("advanced", 12, **HP).eval()
    save_bundle(tmp_path, model, _config(12))
    loaded, config = load_bundle(tmp_path)
    x, t = torch.randn(5, 12), torch.randn(5, 12)
    assert torch.equal(model(x, t).logit, loaded(x, t).logit)
    assert len(config.weights_blake2b) == 32


def test_weights_from_another_save_are_refused(tmp_path):
    torch.manual_seed(0)
    save_bundle(tmp_path / "a", build_head("advanced", 12, **HP), _config(12))
    save_bundle(tmp_path / "b", build_head("advanced", 12, **HP), _config(12))
    (tmp_path / "a" / WEIGHTS).write_bytes((tmp_path / "b" / WEIGHTS).read_bytes())
    assert (tmp_path / "a" / CONFIG).exists()
    with pytest.raises(ValueError, match="does not match"):
        load_bundle(tmp_path / "a")


# ----------------------------------------------------------------------------- untrusted configs

FULL = BundleConfig(
    head=HeadConfig("advanced", 12, train=HeadSettings(**HP)),
    decision=BundleDecision(0.5, "0.5", "none", 1.0, 0.0, uncertain_band=0.05),
    backbones=Backbones(clip=ClipFacts("tiny", ""), caption=CaptionFacts("tiny", 8),
                        patches=PatchesConfig(32, 24, 25)))


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
    ("unknown head", "head.name", "resnet", "head.name: 'resnet' is not one of"),
    ("string dim", "head.dim", "768", "head.dim: expected an integer"),
    ("string hparam", "head.train.hidden_dim", "16", "head.train.hidden_dim"),
    ("unknown hparam", "head.train.depth", 3, "unknown key head.train.depth"),
    ("wrong recipe", "head.recipe", "clip_crop", "head.recipe: 'clip_crop', but the advanced"),
    ("row shape", "head.row_shape", [2, 3, 12], "head.row_shape"),
    ("nan threshold", "decision.threshold", float("nan"), "decision.threshold"),
    ("threshold > 1", "decision.threshold", 1.5, "decision.threshold: 1.5 is out of range"),
    ("negative threshold", "decision.threshold", -0.1,
     "decision.threshold: -0.1 is out of range"),
    ("negative band", "decision.uncertain_band", -0.1, "decision.uncertain_band"),
    ("string threshold", "decision.threshold", "val_acc",
     "decision.threshold: expected a number"),
    ("nan calibration scale", "decision.scale", float("nan"), "decision.scale"),
    ("unknown calibration", "decision.calibration", "isotonic", "decision.calibration"),
    ("zero patch size", "backbones.patches.size", 0, "backbones.patches.size"),
    ("string patch count", "backbones.patches.n_low", "24", "backbones.patches.n_low"),
    ("not a grid", "backbones.patches.n_low", 20, "not a square grid"),
    ("no caption", "backbones.caption", DELETE, "backbones.caption: missing"),
    ("missing clip arch", "backbones.clip.arch", DELETE, "backbones.clip.arch: missing"),
    ("views", "views.count", 0, "views.count: 0 is out of range"),
    ("unknown key", "colour", "red", "unknown key colour"),
    ("no weights hash", "weights_blake2b", DELETE, "weights_blake2b: missing"),
    ("format", "format_version", 99, "format_version: unsupported bundle format 99"),
]


@pytest.mark.parametrize("what, key, value, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_is_refused_naming_file_and_key(tmp_path, what, key, value, message):
    from click.testing import CliRunner

    from nsnet.stages.cli import main

    save_bundle(tmp_path, build_head("advanced", 12, **HP), FULL)
    config = json.loads((tmp_path / CONFIG).read_text())
    assert config["format_version"] == 2
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
    from nsnet.heads.bundle import _digest

    save_bundle(tmp_path, build_head("advanced", 12, **HP), FULL)
    save_bundle(tmp_path / "other", build_head("advanced", 16, **HP), FULL)
    blob = (tmp_path / "other" / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(blob)
    config = json.loads((tmp_path / CONFIG).read_text())
    config["weights_blake2b"] = _digest(blob)  # consistent hash, wrong shapes
    (tmp_path / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit the head"):
        load_bundle(tmp_path)


# ----------------------------------------------------------------------------- typed config


def _record() -> TrainingRecord:
    return TrainingRecord(
        class_counts=ClassCounts(real=3, fake=4), patch_views=2, schedule=method(
            "advanced").schedule(TrainParams()), mapper_rows=7, mapper_r2=0.25,
        params=TrainParams(hidden_dim=16), protocol=ProtocolParams(train_sources=["a"]),
        n_train=7, train_sources=("a", "real"), train_ids="ids", features="feats",
        best_epoch=2, best_val_ap=0.75, preset="ufd", preset_train_sources=("a", "b"),
        preset_train_missing=("b",))


def test_typed_bundle_round_trips(tmp_path):
    """Every section survives save -> load as the same typed value."""
    config = dataclasses.replace(
        FULL, views=ViewsConfig(2, "mean_prob"), training=_record(),
        decision=BundleDecision(0.4, "val_acc", "platt", 2.0, -0.5, 0.1, 12, 0.2, 0.1),
        backbones=dataclasses.replace(FULL.backbones, clip=ClipFacts(
            "tiny", "", weights="random-init(seed=0)", mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25), image_size=224, embed_dim=12)),
        provenance={"nsnet_version": "0"})
    save_bundle(tmp_path, build_head("advanced", 12, **HP), config)
    _, loaded = load_bundle(tmp_path)
    assert loaded == dataclasses.replace(config, weights_blake2b=loaded.weights_blake2b)
    assert read_config(tmp_path) == loaded
    assert loaded.training.schedule.betas == (0.9, 0.999)  # a tuple again after JSON


def test_a_bundle_trained_without_validation_rows_keeps_its_nan_results(tmp_path):
    record = dataclasses.replace(_record(), best_val_ap=float("nan"))
    config = dataclasses.replace(FULL, training=record, decision=BundleDecision(
        val_ece=float("nan"), val_ece_raw=float("nan"), n_val=0))
    save_bundle(tmp_path, build_head("advanced", 12, **HP), config)
    _, loaded = load_bundle(tmp_path)
    assert math.isnan(loaded.training.best_val_ap) and math.isnan(loaded.decision.val_ece)


def test_save_refuses_a_config_it_could_not_load(tmp_path):
    bad = dataclasses.replace(FULL, decision=BundleDecision(threshold=1.5))
    with pytest.raises(ValueError, match=r"decision\.threshold: 1\.5 is out of range"):
        save_bundle(tmp_path, build_head("advanced", 12, **HP), bad)
    assert not (tmp_path / CONFIG).exists()


@pytest.mark.parametrize("version", [0, 3, "2", None, True, 2.0])
def test_unknown_bundle_format_is_refused(tmp_path, version):
    save_bundle(tmp_path, build_head("advanced", 12, **HP), FULL)
    config = json.loads((tmp_path / CONFIG).read_text())
    config["format_version"] = version
    (tmp_path / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / CONFIG}: format_version: unsupported bundle format {version!r} "
            "(this nsnet reads formats 1, 2)")):
        load_bundle(tmp_path)


def _with_weights(bundle: Path, model: torch.nn.Module) -> None:
    """Write ``model``'s weights into ``bundle`` and its config's ``weights_blake2b`` to theirs
    (the config's layout untouched)."""
    from safetensors.torch import save

    from nsnet.heads.bundle import _digest

    blob = save({k: v.contiguous() for k, v in model.state_dict().items()})
    (bundle / WEIGHTS).write_bytes(blob)
    config = json.loads((bundle / CONFIG).read_text())
    config["weights_blake2b"] = _digest(blob)
    (bundle / CONFIG).write_text(json.dumps(config))


def _format_1_bundle(tmp_path: Path, name: str) -> Path:
    """A bundle whose config.json the format-1 writer wrote (tests/fixtures/bundle_format1:
    ``nsnet train`` of main a3ce301 on the tiny demo set, 2 epochs, hidden_dim 16, proj_dim 8,
    nsnet_k 4, temperature calibration), with fresh weights of the head it describes (weights
    stay out of git)."""
    out = tmp_path / name
    out.mkdir()
    shutil.copy(FORMAT_1 / f"{name}.json", out / CONFIG)
    head = json.loads((out / CONFIG).read_text())["head"]
    _with_weights(out, build_head(head["kind"], head["dim"], **head["hparams"]))
    return out


def test_format_1_bundle_loads(tmp_path):
    """What main wrote before typed bundles loads, with its keys in format 2's spelling."""
    _, nsnet = load_bundle(_format_1_bundle(tmp_path, "nsnet"))
    assert nsnet.head == HeadConfig("nsnet", 128, "composite", (128,), HeadSettings(
        hidden_dim=16, proj_dim=8, dropout=0.1, nsnet_k=4, normalize=True,
        mapper="regression_within"))
    clip = nsnet.backbones.clip
    assert (clip.arch, clip.pretrained, clip.weights, clip.weights_blake2b, clip.embed_dim) == \
        ("tiny", "", "random-init(seed=0)", None, 128)
    assert nsnet.backbones.caption == CaptionFacts("tiny", 12)
    assert nsnet.backbones.patches == PatchesConfig(32, 24, 25)
    d = nsnet.decision
    assert (d.calibration, d.n_val, d.uncertain_band) == ("temperature", 6, 0.05)
    assert d.scale == pytest.approx(3.20063242265319)
    assert nsnet.views == ViewsConfig(1, "mean_logit")
    t = nsnet.training
    assert (t.nsnet_k, t.patch_views, t.crops, t.best_epoch, t.recipe) == (4, 1, 0, 1, "composite")
    assert t.class_counts == ClassCounts(real=17, fake=25) and t.params.head == "nsnet"
    assert t.schedule.select == "best_val_ap" and t.schedule.betas == (0.9, 0.999)

    _, univfd = load_bundle(_format_1_bundle(tmp_path, "univfd"))
    assert univfd.head.recipe == "clip_crop" and univfd.backbones.recipe.name == "clip_crop"
    assert univfd.backbones.caption is None and univfd.backbones.patches is None
    assert (univfd.training.patch_views, univfd.training.crops) == (1, 1)
    assert univfd.training.nsnet_k is None and univfd.training.schedule.plateau


def test_a_format_1_bundle_scores_images(tmp_path):
    """The chain that predict rebuilds from a format-1 bundle runs (tiny backbones)."""
    from nsnet.inference.predict import load_chain, predict_paths

    image = tmp_path / "x.png"
    Image.new("RGB", (96, 96), (120, 30, 200)).save(image)
    for name in ("nsnet", "univfd"):
        chain = load_chain(_format_1_bundle(tmp_path, name), "cpu")
        assert chain.band == 0.05 and chain.decision.calibration == "temperature"
        df = predict_paths(chain, [str(image)])
        assert df["status"].tolist() == ["ok"] and 0 <= df["prob"].iloc[0] <= 1


@pytest.mark.parametrize("key, value, message", [
    ("backbones.clip.clip_arch", DELETE, "backbones.clip.arch: missing"),
    ("threshold", -0.5, "threshold: -0.5 is out of range"),
    ("uncertain_band", 0.9, "decision.uncertain_band: 0.9 is out of range"),
    ("head.kind", "resnet", "head.name: 'resnet' is not one of"),
    ("head.hparams.depth", 2, "unknown key head.train.depth"),
    ("backbones.blip", DELETE, "backbones.caption: missing"),
])
def test_a_bad_format_1_bundle_is_refused_naming_file_and_key(tmp_path, key, value, message):
    bundle = _format_1_bundle(tmp_path, "nsnet")
    config = _edit(json.loads((bundle / CONFIG).read_text()), key, value)
    (bundle / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        load_bundle(bundle)
    assert f"{bundle / CONFIG} (a format-1 bundle" in str(err.value)


def test_bundle_settings_are_spelled_as_params():
    """One spelling per setting: the bundle's head settings, CLIP, captioner and patch spec are
    the params' fields of the same name, checked with (at least) the params' bounds."""
    def names(cls):
        return {f.name: f.metadata for f in dataclasses.fields(cls)}

    assert tuple(names(HeadSettings)) == HPARAM_KEYS
    for bundle_cls, params_cls in ((HeadSettings, TrainParams), (CaptionFacts, CaptionParams),
                                   (PatchesConfig, PatchParams)):
        for name, meta in names(bundle_cls).items():
            assert name in names(params_cls)
            assert dict(meta).items() >= dict(names(params_cls)[name]).items(), (bundle_cls, name)
    assert {"arch", "pretrained"} <= set(names(ClipFacts)) & set(names(ClipParams))
    assert params_from_dict({}).clip.pretrained == "openai"  # the params' spelling, not ours


def test_head_settings_defaults_are_the_heads_own():
    """A format-1 bundle's missing hparams meant the head class's defaults; format 2 writes
    them out with the same values."""
    for cls in (NSNet, AdvancedNSNet):
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if name in HPARAM_KEYS:
                assert getattr(HeadSettings(), name) == p.default, (cls, name)


def test_a_format_1_ufd_bundle_is_composite_probe_in_head_and_training(tmp_path):
    """A format-1 bundle trained under the old head name loads as composite_probe, its training
    params too (test_first_contact.py checks a bare one)."""
    bundle = _format_1_bundle(tmp_path, "nsnet")
    config = json.loads((bundle / CONFIG).read_text())
    config["head"]["kind"] = config["training"]["params"]["head"] = "ufd"
    (bundle / CONFIG).write_text(json.dumps(config))
    _with_weights(bundle, build_head("composite_probe", 128))
    model, loaded = load_bundle(bundle)
    assert model.kind == loaded.head.name == loaded.training.params.head == "composite_probe"
