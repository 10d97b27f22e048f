"""Parameters: one typed, validated tree loaded from ``params.yaml``.

Everything configurable lives here, so config flows from one place (``load_params``) to every
stage. Validation happens up front: an unknown key, a wrong type or an out-of-range value raises
``ParamsError`` naming the dotted key, before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsnet.registry import LAYOUTS, MAPPERS, METHODS, PRESETS


class ParamsError(ValueError):
    """A parameter file or override is invalid; the message names the offending key."""


class YamlLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 and DVC do."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check(lo: float | None = None, hi: float | None = None, choices: tuple = (), **kw: Any):
    """Field metadata: inclusive numeric bounds and/or allowed string choices; ``kw``:
    ``exclusive_lo``, ``auto`` (an integer or "auto"), ``registry`` (a ``nsnet.registry``
    registry whose names are the choices: its owners list them, config keeps no copy),
    ``pattern`` (a string's regular expression, ``means`` its description), ``nan`` (a float
    that may be NaN: a recorded result, e.g. an AP without validation rows)."""
    return {"lo": lo, "hi": hi, "choices": choices, **kw}


DEFAULT_COMPARE_HEADS = ("composite_probe", "nsnet", "advanced")


@dataclass
class SplitParams:
    train: float = field(default=0.7, metadata=_check(0.0, 1.0))
    val: float = field(default=0.15, metadata=_check(0.0, 1.0))
    test: float = field(default=0.15, metadata=_check(0.0, 1.0))


ROLE_CHOICES = ("auto", "train", "test")


@dataclass
class RootParams:
    """One image folder: ``path``, its ``role`` in the protocol and optionally its layout.

    A plain string in ``data.roots`` means ``{path: <string>}``. Roles: ``auto`` keeps the
    layout's official split (else a content-hash split), ``train`` puts every image in train/val,
    ``test`` puts every image in test. ``layout: ""`` means ``data.layout``.
    """

    path: str = ""
    role: str = field(default="auto", metadata=_check(choices=ROLE_CHOICES))
    layout: str = field(default="", metadata=_check(registry=LAYOUTS, empty=True))


@dataclass
class DataParams:
    roots: list[RootParams] = field(default_factory=lambda: [RootParams("data/images")])
    layout: str = field(default="auto", metadata=_check(registry=LAYOUTS))
    split: SplitParams = field(default_factory=SplitParams)
    max_image_pixels: int = field(default=178_956_970, metadata=_check(1))
    strict: bool = False
    num_workers: int | str = field(default="auto", metadata=_check(0, 256, auto=True))
    skip_lists: list[str] = field(default_factory=list)  # files listing images to leave out


@dataclass
class ProtocolParams:
    preset: str = field(default="none", metadata=_check(registry=PRESETS))
    train_sources: list[str] = field(default_factory=list)
    test_sources: list[str] = field(default_factory=list)
    degradations: list[str] = field(default_factory=list)
    train_reencode: str = ""  # "" or jpeg<q>: extract re-encodes train/val images (shortcut)


@dataclass
class PatchParams:
    size: int = field(default=32, metadata=_check(4, 512))
    n_low: int = field(default=24, metadata=_check(0, 1024))
    n_high: int = field(default=25, metadata=_check(0, 1024))
    keep_composites: bool = False  # also write cache/composites.h5 (150 KB/image) to look at
    views: int = field(default=1, metadata=_check(1, 256))  # fixed grid orders per image


@dataclass
class ClipParams:
    arch: str = "ViT-L-14"
    pretrained: str = "openai"
    batch_size: int | str = field(default="auto", metadata=_check(1, 65536, auto=True))


@dataclass
class CaptionParams:
    model: str = "Salesforce/blip-image-captioning-base"
    max_new_tokens: int = field(default=40, metadata=_check(1, 512))
    batch_size: int | str = field(default="auto", metadata=_check(1, 65536, auto=True))


@dataclass
class ComputeParams:
    device: str = "auto"
    precision: str = field(default="fp16", metadata=_check(choices=("fp32", "fp16", "bf16")))
    num_workers: int | str = field(default="auto", metadata=_check(0, 256, auto=True))
    torch_threads: int | str = field(default="auto", metadata=_check(1, 1024, auto=True))
    shard_size: int = field(default=8192, metadata=_check(1, 10_000_000))
    scheduler: str = ""


@dataclass
class TrainParams:
    head: str = field(default="advanced", metadata=_check(registry=METHODS))
    epochs: int = field(default=20, metadata=_check(1, 100_000))
    batch_size: int = field(default=256, metadata=_check(2, 1_000_000))
    lr: float = field(default=2e-4, metadata=_check(0.0, 10.0, exclusive_lo=True))
    weight_decay: float = field(default=0.0, metadata=_check(0.0, 10.0))
    temperature: float = field(default=0.07, metadata=_check(1e-4, 100.0))
    bce_weight: float = field(default=0.1667, metadata=_check(0.0, 1.0))
    align_weight: float = field(default=0.25, metadata=_check(0.0, 100.0))
    hidden_dim: int = field(default=512, metadata=_check(1, 65536))
    proj_dim: int = field(default=128, metadata=_check(1, 65536))
    dropout: float = field(default=0.1, metadata=_check(0.0, 0.99))
    nsnet_k: int = field(default=32, metadata=_check(0, 65536))
    mapper: str = field(default="regression_within", metadata=_check(registry=MAPPERS))
    normalize: bool = True
    balance: bool = True
    seed: int = field(default=0, metadata=_check(0))
    # several seeds: every number becomes mean ± std over them; [] = the one train.seed
    seeds: list[int] = field(default_factory=list)
    device: str = "auto"


CALIBRATIONS = ("none", "temperature", "platt")
VIEW_AVERAGES = ("mean_logit", "mean_prob", "first")  # how K patch-order views are combined


@dataclass
class EvaluateParams:
    """``threshold``: a number in [0, 1] or a rule chosen on the validation split
    (``val_acc``, ``val_eer``, ``val_fpr:<x>``); ``calibration`` of the probability."""

    threshold: float | str = 0.5
    calibration: str = field(default="none", metadata=_check(choices=CALIBRATIONS))
    view_average: str = field(default="mean_logit", metadata=_check(choices=VIEW_AVERAGES))
    uncertain_band: float = field(default=0.05, metadata=_check(0.0, 0.5))


@dataclass
class AuditParams:
    warn_auc: float = field(default=0.8, metadata=_check(0.5, 1.0))
    folds: int = field(default=5, metadata=_check(2, 20))


@dataclass
class FigureParams:
    tsne_points: int = field(default=2000, metadata=_check(10, 1_000_000))
    tsne_perplexity: float = field(default=30.0, metadata=_check(1.0, 1000.0))


MATRIX_METRICS = ("acc", "ap", "real_acc", "fake_acc", "auc")


@dataclass
class MatrixParams:
    """The cross-generator matrix (``nsnet matrix``): train on each source in turn."""

    train_sources: list[str] = field(default_factory=list)  # [] = every generator with train
    metric: str = field(default="acc", metadata=_check(choices=MATRIX_METRICS))  # heatmap cells


@dataclass
class CompareParams:
    heads: list[str] = field(default_factory=lambda: list(DEFAULT_COMPARE_HEADS))


@dataclass
class RecipeParams:
    """The inputs of the paper baseline heads (``nsnet.backbones.recipes``), extracted only
    when ``train.head`` or ``compare.heads`` names a head that reads them."""

    crop_augmentations: int = field(default=8, metadata=_check(0, 64))
    layer_augmentations: int = field(default=1, metadata=_check(0, 64))
    layers: list[int] | str = "all"
    cozzolino_arch: str = "ViT-L-14"
    cozzolino_pretrained: str = "commonpool_xl_s13b_b90k"


@dataclass
class Params:
    seed: int = field(default=0, metadata=_check(0))
    data: DataParams = field(default_factory=DataParams)
    protocol: ProtocolParams = field(default_factory=ProtocolParams)
    patches: PatchParams = field(default_factory=PatchParams)
    clip: ClipParams = field(default_factory=ClipParams)
    caption: CaptionParams = field(default_factory=CaptionParams)
    compute: ComputeParams = field(default_factory=ComputeParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    audit: AuditParams = field(default_factory=AuditParams)
    figures: FigureParams = field(default_factory=FigureParams)
    compare: CompareParams = field(default_factory=CompareParams)
    recipes: RecipeParams = field(default_factory=RecipeParams)
    matrix: MatrixParams = field(default_factory=MatrixParams)
    # each head's own settings, methods.<head>.<key>: validated by the head's module
    # (nsnet.heads.methods.<head>, its ``settings``) when the head is used
    methods: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=_check(
        registry=METHODS, keys=True))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Check ``value`` against the annotated type ``tp`` and the field's bounds."""
    if meta.get("auto"):  # an integer, or "auto" (resolved by nsnet.runtime for the machine)
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer or 'auto', got {value!r}")
        tp = int
    origin = typing.get_origin(tp)
    if tp is type(None):
        if value is not None:
            raise ParamsError(f"{key}: expected null, got {value!r}")
        return None
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is dict:
        if value is None and meta.get("keys"):  # a section whose entries are all commented out
            return {}
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__}")
        if meta.get("keys"):  # each key a registry name, each value a mapping (its section)
            for name, section in value.items():
                problem = meta["registry"].problem(name) if isinstance(name, str) else "not a name"
                if problem:
                    raise ParamsError(f"{key}.{name}: {problem}")
                if not isinstance(section, dict):
                    raise ParamsError(f"{key}.{name}: expected a mapping, got {section!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)[:1]
        items = [_coerce(f"{key}[{i}]", v, item_tp, {}) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # X | None: a value is an X, and X's own error names the key
            return _coerce(key, value, options[0], meta)
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option, meta)
            except ParamsError:
                continue
        raise ParamsError(f"{key}: {value!r} does not match {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            if meta.get("nan") and value != value:  # a recorded result that may be undefined
                return value
            raise ParamsError(f"{key}: {value!r} is not a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        pattern = meta.get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            raise ParamsError(f"{key}: {value!r} is not {meta.get('means') or pattern}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("exclusive_lo") and value == lo)):
        raise ParamsError(f"{key}: {value!r} is out of range (must be > {lo})"
                          if meta.get("exclusive_lo") else
                          f"{key}: {value!r} is out of range (must be >= {lo})")
    if hi is not None and value > hi:
        raise ParamsError(f"{key}: {value!r} is out of range (must be <= {hi})")
    registry = meta.get("registry")
    if registry is not None and isinstance(value, str) and not (meta.get("empty") and value == ""):
        problem = registry.problem(value)
        if problem:
            raise ParamsError(f"{key}: {problem}")
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise ParamsError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        section = prefix.rstrip(".") or "top level"
        raise ParamsError(
            f"unknown key {prefix}{unknown[0]} (allowed under '{section}': {', '.join(fields)})"
        )
    for name, f in fields.items():  # a field without a default is required
        if name not in data and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{prefix}{name}: missing")
    kwargs = {
        name: _coerce(prefix + name, value, hints[name], fields[name].metadata)
        for name, value in data.items()
    }
    return cls(**kwargs)


def build_section(cls: type, data: Any, prefix: str = "") -> Any:
    """Validate one mapping against a typed dataclass; errors name ``prefix`` + the key.

    The one validator of settings read from files: ``params.yaml`` (``Params``) and what
    records parameters elsewhere, e.g. a model bundle's ``config.json``
    (``nsnet.heads.bundle_config.BundleConfig``).
    """
    if not isinstance(data, dict):
        raise ParamsError(f"{prefix.rstrip('.')}: expected a mapping, got {type(data).__name__}")
    return _build(cls, data, prefix)


def checked_field(default: Any = dataclasses.MISSING, **check: Any) -> Any:
    """A dataclass field validated by ``_build`` with ``check`` (the keywords of ``_check``);
    without ``default`` the field is required."""
    return field(default=default, metadata=_check(**check))


def param_field(cls: type, name: str, default: Any = dataclasses.MISSING) -> Any:
    """A field checked as field ``name`` of params dataclass ``cls`` is (its bounds, choices),
    for types that record a parameter elsewhere (e.g. a model bundle's ``backbones.patches``);
    without ``default`` the field is required."""
    meta = {f.name: f for f in dataclasses.fields(cls)}[name].metadata
    return field(default=default, metadata=meta)


def to_plain(record: Any) -> Any:
    """A typed record (dataclasses, tuples) as plain JSON values (dicts, lists): what
    ``build_section`` reads back into the same record."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_plain(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, list | tuple):
        return [to_plain(v) for v in record]
    if isinstance(record, dict):
        return {k: to_plain(v) for k, v in record.items()}
    return record


def check_value(key: str, value: Any, cls: type, name: str) -> Any:
    """Check ``value`` against field ``name`` of params dataclass ``cls`` (type and range)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return _coerce(key, value, typing.get_type_hints(cls)[name], f.metadata)


def _check_compare(p: Params) -> None:
    heads = p.compare.heads
    if not heads:
        raise ParamsError("compare.heads: name at least one head, e.g. [composite_probe, nsnet, "
                          "advanced]")
    for i, head in enumerate(heads):
        problem = METHODS.problem(head)
        if problem:
            raise ParamsError(f"compare.heads[{i}]: {problem}")
    if len(set(heads)) != len(heads):
        raise ParamsError(f"compare.heads: heads repeat in {heads}")
    layers = p.recipes.layers
    if isinstance(layers, str):
        if layers != "all":
            raise ParamsError(f"recipes.layers: {layers!r} is neither 'all' nor a list of block "
                              "indices (0-based), e.g. [11, 17, 23]")
    elif not layers or any(i < 0 for i in layers) or layers != sorted(set(layers)):
        raise ParamsError(f"recipes.layers: {layers!r}: give increasing, distinct block indices "
                          ">= 0 (0-based), or 'all'")


DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _cross_checks(p: Params) -> None:
    for key, device in (("compute.device", p.compute.device), ("train.device", p.train.device)):
        if not DEVICE_RE.fullmatch(device):
            raise ParamsError(f"{key}: {device!r} is not a device (auto, cpu, cuda, cuda:N, mps)")
    s = p.data.split
    if abs(s.train + s.val + s.test - 1.0) > 1e-6:
        raise ParamsError(
            f"data.split: train + val + test must sum to 1 (got {s.train + s.val + s.test:g})"
        )
    if p.patches.n_low + p.patches.n_high < 1:
        raise ParamsError("patches.n_low + patches.n_high must be at least 1")
    grid = round((p.patches.n_low + p.patches.n_high) ** 0.5)
    if grid * grid != p.patches.n_low + p.patches.n_high:
        raise ParamsError(
            "patches.n_low + patches.n_high must be a square number (a grid), got "
            f"{p.patches.n_low + p.patches.n_high}"
        )
    if p.patches.views > math.factorial(min(p.patches.n_low + p.patches.n_high, 20)):
        raise ParamsError(
            f"patches.views: {p.patches.views} distinct orders of "
            f"{p.patches.n_low + p.patches.n_high} patches do not exist"
        )
    if not p.data.roots:
        raise ParamsError("data.roots: at least one image folder is required")
    for i, root in enumerate(p.data.roots):
        if not root.path:
            raise ParamsError(f"data.roots[{i}].path: an image folder is required")
    if p.protocol.preset != "none":
        for key in ("train_sources", "test_sources"):
            if getattr(p.protocol, key):
                raise ParamsError(
                    f"protocol.{key}: protocol.preset {p.protocol.preset!r} sets the training "
                    "sources and test rows; leave train_sources and test_sources empty ([])"
                )
    _check_seeds(p.train.seeds)
    _check_degradations(p)
    _check_compare(p)
    _check_threshold(p.evaluate.threshold)
    _check_reencode(p.protocol.train_reencode)


def _check_seeds(seeds: list[int]) -> None:
    for i, seed in enumerate(seeds):
        if seed < 0:
            raise ParamsError(f"train.seeds[{i}]: {seed} is out of range (must be >= 0)")
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"train.seeds: seeds repeat in {seeds}; each seed is one run")


# ----------------------------------------------------------------------------- decision threshold
THRESHOLD_RULES = ("val_acc", "val_eer", "val_fpr:<x>")


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed ``evaluate.threshold``: a fixed ``value``, or a ``kind`` chosen on validation."""

    kind: str  # "fixed" | "val_acc" | "val_eer" | "val_fpr"
    value: float  # the fixed threshold, or the FPR bound of val_fpr (else 0)

    @property
    def text(self) -> str:
        if self.kind == "fixed":
            return f"{self.value:g}"
        return f"val_fpr:{self.value:g}" if self.kind == "val_fpr" else self.kind


def parse_threshold(value: float | str) -> ThresholdRule:
    """``0.5`` -> fixed 0.5; ``val_acc`` / ``val_eer`` / ``val_fpr:0.01`` -> a rule."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0.0 <= float(value) <= 1.0:
            raise ParamsError(f"evaluate.threshold: {value!r} is out of range (must be in [0, 1])")
        return ThresholdRule("fixed", float(value))
    text = str(value).strip()
    if text in ("val_acc", "val_eer"):
        return ThresholdRule(text, 0.0)
    m = re.fullmatch(r"val_fpr:\s*([0-9.eE+-]+)", text)
    if m:
        try:
            x = float(m.group(1))
        except ValueError:
            x = -1.0
        if 0.0 <= x < 1.0:
            return ThresholdRule("val_fpr", x)
        raise ParamsError(f"evaluate.threshold: {text!r}: the false-positive rate must be in "
                          "[0, 1), e.g. val_fpr:0.01")
    raise ParamsError(f"evaluate.threshold: {value!r} is neither a number in [0, 1] nor one of "
                      f"{', '.join(THRESHOLD_RULES)} (e.g. val_fpr:0.01)")


def _check_threshold(value: float | str) -> None:
    parse_threshold(value)


def _check_reencode(name: str) -> None:
    if not name:
        return
    try:
        spec = parse_degradation(name)
    except DegradationError as exc:
        raise ParamsError(f"protocol.train_reencode: {exc}") from exc
    if spec.kind != "jpeg":
        raise ParamsError(f"protocol.train_reencode: {name!r}: only jpeg<quality> re-encodes "
                          "(e.g. jpeg95); use \"\" for none")


# ----------------------------------------------------------------------------- degradation names
# A test-time degradation (``protocol.degradations``) is named jpeg<q>, resize<n> or blur<s>;
# ``nsnet.data.degradations`` applies them to pixels.

GENIMAGE_DEGRADATIONS = ("jpeg65", "jpeg30", "resize112", "resize64", "blur3", "blur5")
_NAME = re.compile(r"^(jpeg|resize|blur)(\d+(?:\.\d+)?)$")


class DegradationError(ValueError):
    """A degradation name is not understood or its value is out of range."""


@dataclass(frozen=True)
class Degradation:
    """A parsed degradation name, e.g. ``jpeg65`` -> kind ``jpeg``, value 65."""

    name: str
    kind: str
    value: float

    def output_side(self) -> int | None:
        """The side of every output image when the degradation fixes it (resize), else None."""
        return int(self.value) if self.kind == "resize" else None


def parse_degradation(name: str) -> Degradation:
    """Validate a degradation name; raise ``DegradationError`` naming the accepted forms."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if not m:
        raise DegradationError(
            f"unknown degradation {name!r}: use jpeg<quality 1-100>, resize<side px> or "
            f"blur<sigma px>, e.g. {', '.join(GENIMAGE_DEGRADATIONS)}"
        )
    kind, value = m.group(1), float(m.group(2))
    if kind == "jpeg" and not (1 <= value <= 100 and value.is_integer()):
        raise DegradationError(f"{name}: JPEG quality must be an integer in 1..100")
    if kind == "resize" and not (1 <= value <= 65536 and value.is_integer()):
        raise DegradationError(f"{name}: resize side must be a whole number of pixels >= 1")
    if kind == "blur" and not 0 < value <= 100:
        raise DegradationError(f"{name}: blur sigma must be in (0, 100]")
    return Degradation(name, kind, value)


def _check_degradations(p: Params) -> None:

    names = p.protocol.degradations
    if len(set(names)) != len(names):
        raise ParamsError(f"protocol.degradations: names repeat in {names}")
    for i, name in enumerate(names):
        try:
            side = parse_degradation(name).output_side()
        except DegradationError as exc:
            raise ParamsError(f"protocol.degradations[{i}]: {exc}") from exc
        if side is not None and side < p.patches.size:
            raise ParamsError(
                f"protocol.degradations[{i}]: {name} makes {side} px images, smaller than one "
                f"patches.size={p.patches.size} patch, so they could not be patched"
            )


def _normalise_roots(data: dict[str, Any]) -> dict[str, Any]:
    """Accept plain strings in ``data.roots`` as ``{path: <string>}``."""
    section = data.get("data")
    if not isinstance(section, dict) or not isinstance(section.get("roots"), list):
        return data
    roots = [{"path": r} if isinstance(r, str) else r for r in section["roots"]]
    return {**data, "data": {**section, "roots": roots}}


def params_from_dict(data: dict[str, Any] | None) -> Params:
    """Validate a raw mapping into ``Params`` (missing keys take their defaults)."""
    params = _build(Params, _normalise_roots(data or {}))
    _cross_checks(params)
    return params


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b=value`` (value in YAML syntax) into a dotted key and a Python value."""
    if "=" not in item:
        raise ParamsError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ParamsError(f"override {item!r} must look like key.sub=value")
    try:
        return key.strip(), yaml.load(raw, Loader=YamlLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"--set {item}: the value is not valid YAML ({problem}); quote "
                          "strings that contain ':', '[', '{' or '#'") from exc


def apply_overrides(raw: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.sub=value`` overrides applied."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        key, value = parse_override(item)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return out


def source_line(path: str | Path | None, overrides: typing.Iterable[str] = (),
                cwd: str | Path = ".") -> str:
    """The one line a command prints about its parameters: which file (or that none was found,
    where it looked, and any params.yaml in a folder above), plus the ``--set`` overrides."""
    sets = "".join(f" --set {o}" for o in overrides)
    if path is not None:
        return f"params: {path}{sets}"
    here = Path(cwd).absolute()
    if (here / "params.yaml").is_file():
        return f"params: params.yaml{sets}"
    above = next((d for d in here.parents if (d / "params.yaml").is_file()), None)
    hint = (f"{above} has one: run from there, or pass --params FILE" if above else
            "run from your workspace, or pass --params FILE")
    where = f"{here}" if above else f"{here} or above"
    return f"params: no params.yaml in {where}: built-in defaults{sets} ({hint})"


def load_params(path: str | Path = "params.yaml", overrides: typing.Iterable[str] = (),
                required: bool = False) -> Params:
    """Read, override and validate a params file.

    A missing file means all defaults, unless ``required`` (the user named the file with
    ``--params``), in which case it is an error.
    """
    path = Path(path)
    raw: dict[str, Any] = {}
    if required and not path.is_file():
        raise ParamsError(f"--params {path}: no such file" if not path.exists() else
                          f"--params {path}: not a file")
    if path.exists():
        try:
            raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=YamlLoader) or {}
        except UnicodeDecodeError as exc:
            raise ParamsError(f"{path}: not a text (UTF-8 YAML) file: byte {exc.start} cannot "
                              "be decoded") from exc
        except OSError as exc:
            raise ParamsError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ParamsError(f"{path}: the top level must be a mapping")
    return params_from_dict(apply_overrides(raw, overrides))
