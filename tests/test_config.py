"""Parameters: the repo's params.yaml validates; overrides and every kind of error name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nsnet.config import (
    Params,
    ParamsError,
    apply_overrides,
    checked_field,
    load_params,
    params_from_dict,
    parse_override,
)
from tests.conftest import default_raw

ROOT = Path(__file__).resolve().parents[1]


def repo_raw() -> dict:
    """The code's defaults (= the shipped params.yaml), never the user's edits to the file."""
    return default_raw()


@pytest.mark.reads_repo_params
def test_the_workspace_params_file_is_valid():
    """The one test that reads the repository's params.yaml, whatever the user put in it: it
    must still be a valid params file (the README's edits keep it so)."""
    assert isinstance(load_params(ROOT / "params.yaml"), Params)


def test_code_defaults_name_the_real_models():
    d = Params()
    assert (d.clip.arch, d.clip.pretrained) == ("ViT-L-14", "openai")
    assert d.caption.model == "Salesforce/blip-image-captioning-base"
    assert d.caption.max_new_tokens == 40
    assert (d.patches.size, d.patches.n_low, d.patches.n_high) == (32, 24, 25)
    assert params_from_dict(repo_raw()) == d  # the mapping form round-trips


def test_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml").to_dict() == Params().to_dict()


@pytest.mark.parametrize(("item", "key", "value"), [
    ("train.lr=1e-3", "train.lr", 1e-3),
    ("train.epochs=7", "train.epochs", 7),
    ("train.normalize=false", "train.normalize", False),
    ("protocol.train_sources=[real, tconv]", "protocol.train_sources", ["real", "tconv"]),
    ("clip.pretrained=", "clip.pretrained", ""),
    ("caption.model=a=b", "caption.model", "a=b"),
    (" seed = 3", "seed", 3),
])
def test_parse_override(item, key, value):
    assert parse_override(item) == (key, value)


def test_parse_override_without_equals_is_an_error():
    with pytest.raises(ParamsError, match="train.lr"):
        parse_override("train.lr")


def test_apply_overrides_copies_and_overrides():
    raw = repo_raw()
    out = apply_overrides(raw, ["train.lr=0.01", "train.head=composite_probe", "data.split.val=0.2",
                                "data.split.test=0.1"])
    assert raw["train"]["lr"] == 0.0002  # the input is untouched
    p = params_from_dict(out)
    assert (p.train.lr, p.train.head, p.data.split.val) == (0.01, "composite_probe", 0.2)
    assert p.train.epochs == raw["train"]["epochs"]  # siblings keep their values


def test_load_params_applies_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(repo_raw()))
    p = load_params(path, ["train.epochs=3", "clip.arch=tiny"])
    assert (p.train.epochs, p.clip.arch) == (3, "tiny")


def test_exponent_without_dot_is_a_float_in_files_and_overrides(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string; DVC (YAML 1.2) and users write it as a number."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    p = load_params(path, ["train.temperature=2e-2"])
    assert (p.train.lr, p.train.weight_decay, p.train.temperature) == (1e-3, 5e-4, 2e-2)


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ParamsError, match="seed"):
        apply_overrides(repo_raw(), ["seed.x=1"])


@pytest.mark.parametrize(("overrides", "key", "detail"), [
    (["train.lerning_rate=0.1"], "train.lerning_rate", "unknown key"),
    (["trian.lr=0.1"], "trian", "unknown key"),
    (["data.split.tran=0.7"], "data.split.tran", "unknown key"),
    (["train.epochs=ten"], "train.epochs", "integer"),
    (["train.epochs=2.5"], "train.epochs", "integer"),
    (["train.normalize=1"], "train.normalize", "true/false"),
    (["train.lr=fast"], "train.lr", "number"),
    (["data.roots=data"], "data.roots", "list"),
    (["clip.arch=3"], "clip.arch", "string"),
    (["train.lr=0"], "train.lr", "out of range"),
    (["train.lr=-1"], "train.lr", "out of range"),
    (["train.dropout=1.5"], "train.dropout", "out of range"),
    (["patches.size=2"], "patches.size", "out of range"),
    (["data.split.train=1.5"], "data.split.train", "out of range"),
    (["train.head=resnet"], "train.head", "not one of"),
    (["compute.precision=fp8"], "compute.precision", "not one of"),
    (["data.split.train=0.5"], "data.split", "sum to 1"),
    (["patches.n_low=20"], "patches.n_low", "square"),
    (["data.roots=[]"], "data.roots", "at least one"),
])
def test_bad_values_raise_params_error_naming_the_key(overrides, key, detail):
    with pytest.raises(ParamsError) as err:
        params_from_dict(apply_overrides(repo_raw(), overrides))
    assert key in str(err.value)
    assert detail in str(err.value)


def test_bad_yaml_file_is_a_params_error(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="params.yaml"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


def test_section_given_as_scalar_is_an_error():
    raw = repo_raw()
    raw["train"] = 5
    with pytest.raises(ParamsError, match="train: expected a mapping"):
        params_from_dict(raw)


def test_auto_runtime_settings_fit_the_machine():
    """`auto` resolves per machine: workers leave a core to the models, torch threads avoid
    cores that workers or other processes already use, batches depend on the device."""
    from nsnet import runtime

    cores = runtime.cpu_count()
    assert runtime.workers("auto") == max(0, min(runtime.MAX_AUTO_WORKERS, cores - 1))
    assert runtime.workers(3) == 3 and runtime.index_workers("auto") == cores
    assert runtime.torch_threads("auto", 0, "cpu", load=0.0) == cores
    assert runtime.torch_threads("auto", 0, "cpu", load=float(cores) + 3) == 1  # busy machine
    assert runtime.torch_threads("auto", cores + 4, "cpu", load=0.0) == 1
    assert runtime.torch_threads(7, 0, "cpu", load=99.0) == 7  # explicit numbers are kept
    assert runtime.caption_batch("auto", "cpu") == runtime.CPU_CAPTION_BATCH
    assert runtime.clip_batch(48, "cpu") == 48
    assert runtime._by_memory(runtime.GPU_CAPTION_BATCH, 80.0) == 256
    assert runtime._by_memory(runtime.GPU_CAPTION_BATCH, 24.0) == 96
    assert runtime._by_memory(runtime.GPU_CLIP_BATCH, 8.0) == 64


def test_every_auto_is_resolved_in_one_place():
    """`runtime.resolve` (which every command calls) leaves no `auto` anywhere; explicit
    values stay as written, and a dask scheduler keeps compute.device for its workers."""
    import dataclasses

    from nsnet import runtime

    defaults = Params()
    machine = _machine_keys(Params)  # integers-or-auto (config's `auto=True`) and devices
    assert set(machine) == {"data.num_workers", "compute.num_workers", "compute.torch_threads",
                            "clip.batch_size", "caption.batch_size", "compute.device",
                            "train.device"}
    resolved = runtime.resolve(defaults)
    flat = _flat(resolved.to_dict())
    assert all(_flat(defaults.to_dict())[k] == "auto" for k in machine)  # shipped as auto
    assert [k for k in machine if flat[k] == "auto"] == []
    assert resolved.data.num_workers == runtime.cpu_count()
    assert resolved.compute.device in ("cpu", "cuda") and resolved.train.device in ("cpu", "cuda")
    assert defaults.data.num_workers == "auto"  # a new object; the params are not modified
    explicit = params_from_dict({"data": {"num_workers": 3}, "compute": {
        "num_workers": 1, "torch_threads": 2, "device": "cpu"}, "clip": {"batch_size": 5}})
    got = runtime.resolve(explicit)
    assert (got.data.num_workers, got.compute.num_workers, got.compute.torch_threads,
            got.clip.batch_size) == (3, 1, 2, 5)
    remote = dataclasses.replace(defaults, compute=dataclasses.replace(
        defaults.compute, scheduler="tcp://head:8786"))
    assert runtime.resolve(remote).compute.device == "auto"
    assert runtime.resolve(defaults, scheduler="tcp://h:1").compute.device == "auto"
    assert isinstance(runtime.resolve(remote).compute.num_workers, int)


def _machine_keys(cls: type, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _machine_keys(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("auto") or f.name == "device":
            keys.append(prefix + f.name)
    return keys


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_auto_params_accept_auto_or_a_number_only(tmp_path):
    from tests.conftest import tiny_params

    assert tiny_params(tmp_path, compute={"num_workers": "auto"}).compute.num_workers == "auto"
    assert tiny_params(tmp_path, clip={"batch_size": 8}).clip.batch_size == 8
    for section, key, bad in (("compute", "num_workers", "many"), ("caption", "batch_size", 0),
                              ("compute", "torch_threads", True)):
        with pytest.raises(ParamsError, match=f"{section}.{key}"):
            tiny_params(tmp_path, **{section: {key: bad}})


def test_precision_names_are_the_one_precision_map():
    """``compute.precision`` accepts exactly the names of ``nsnet.backbones.precision``, the
    one place that maps them to autocast dtypes (extraction and predict both read it)."""
    from nsnet.backbones.precision import PRECISIONS, amp_dtype
    from nsnet.config import ComputeParams

    field = {f.name: f for f in dataclasses.fields(ComputeParams)}["precision"]
    assert tuple(field.metadata["choices"]) == tuple(PRECISIONS)
    assert amp_dtype("fp32") is None
    for path in (ROOT / "pipeline").rglob("*.py"):  # no second map, no autocast elsewhere
        if path.name != "precision.py":
            text = path.read_text()
            assert "torch.autocast" not in text and "torch.bfloat16" not in text, path


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = checked_field(lo=1)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = checked_field(pattern=r"[a-z]+", means="a lower-case word")
    inner: Inner | None = None
    shape: tuple[int, ...] = ()
    score: float = checked_field(0.0, nan=True)
    ratio: float = 0.0


def test_typed_sections_check_required_optional_and_tuple_fields():
    """The machinery typed bundle configs use: a field without a default is required, ``X |
    None`` reports X's own error, tuples stay tuples, NaN only where a field allows it."""
    from nsnet.config import build_section

    assert build_section(Outer, {"name": "a", "shape": [1, 2]}) == Outer("a", None, (1, 2))
    assert build_section(Outer, {"name": "a", "inner": None}).inner is None
    for data, message in (({}, "cfg.name: missing"),
                          ({"name": "A"}, "cfg.name: 'A' is not a lower-case word"),
                          ({"name": "a", "inner": {}}, "cfg.inner.size: missing"),
                          ({"name": "a", "inner": {"size": 0}}, "cfg.inner.size: 0 is out of"),
                          ({"name": "a", "ratio": float("nan")},
                           "cfg.ratio: nan is not a finite number")):
        with pytest.raises(ParamsError, match=message):
            build_section(Outer, data, "cfg.")
    nan = build_section(Outer, {"name": "a", "score": float("nan")}).score
    assert nan != nan
