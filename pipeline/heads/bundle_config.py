"""A model bundle's ``config.json`` as one frozen type, validated like params.

``BundleConfig`` says what a bundle is: its head (``head``: name, feature recipe, row shape and
the ``train.*`` settings it is built from), the backbones that make the head's input
(``backbones``: ``clip``, ``caption`` and ``patches``, or a baseline's ``recipe``, spelled as
params.yaml spells them), its decision (calibration, threshold, uncertain band), the patch-order
views it scores (``views``), how it was trained (``training``) and by which code
(``provenance``).

``parse_config`` reads the file's mapping through ``nsnet.config.build_section``, the
validator of ``params.yaml``: a wrong type, an out-of-range value, an unknown or a missing key
is refused naming the file and the dotted key. Format 2 is written; format 1 (nsnet before typed
bundles) is converted on read; any other format is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsnet.config import (
    CaptionParams,
    ClipParams,
    EvaluateParams,
    ParamsError,
    PatchParams,
    TrainParams,
    build_section,
    check_value,
    checked_field,
    param_field,
    to_plain,
)
from nsnet.extraction.patch_selection import PatchSpec
from nsnet.heads.decision import Decision
from nsnet.heads.detectors import HPARAM_KEYS
from nsnet.heads.method import method
from nsnet.heads.training_info import TrainingRecord
from nsnet.registry import METHODS, RECIPES

CONFIG = "config.json"
FORMAT_VERSION = 2
FORMATS_READ = (1, 2)


class BundleError(ValueError):
    """A bundle's ``config.json`` is not one ``nsnet train`` could have written."""


@dataclass(frozen=True)
class HeadSettings:
    """The ``train.*`` settings a head is built from (``detectors.HPARAM_KEYS``, checked as
    params checks them); the defaults are the head classes' own, as ``build_head`` has them."""

    hidden_dim: int = param_field(TrainParams, "hidden_dim", 512)
    proj_dim: int = param_field(TrainParams, "proj_dim", 128)
    dropout: float = param_field(TrainParams, "dropout", 0.1)
    nsnet_k: int = param_field(TrainParams, "nsnet_k", 32)
    normalize: bool = True
    mapper: str = param_field(TrainParams, "mapper", "end_to_end")

    @classmethod
    def of(cls, train: TrainParams) -> HeadSettings:
        return cls(**{k: getattr(train, k) for k in HPARAM_KEYS})

    def as_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HeadConfig:
    """Which head, over which features: ``name`` (as ``train.head``), the width ``dim`` of a
    feature row, the ``recipe`` that makes the rows and their ``row_shape`` (``[dim]``, or
    ``[blocks, dim]`` for RINE's class tokens; empty means ``[dim]``)."""

    name: str = param_field(TrainParams, "head")
    dim: int = checked_field(lo=1)
    recipe: str = checked_field("composite", registry=RECIPES)
    row_shape: tuple[int, ...] = ()
    train: HeadSettings = HeadSettings()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.row_shape or (self.dim,)


@dataclass(frozen=True)
class ClipFacts:
    """The CLIP that made the features: ``clip.arch``, ``clip.pretrained``, and what its weights
    showed when they were extracted (``None`` for a store converted from the legacy layout)."""

    arch: str = checked_field(pattern=r"\S.*", means="an open_clip architecture name")
    pretrained: str = param_field(ClipParams, "pretrained", "")
    weights: str | None = None
    weights_blake2b: str | None = None
    open_clip: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image_size: int | None = checked_field(None, lo=1)
    embed_dim: int | None = checked_field(None, lo=1)


@dataclass(frozen=True)
class CaptionFacts:
    """The captioner of the composite recipe (``caption.model``, ``caption.max_new_tokens``)."""

    model: str = checked_field(pattern=r"\S.*", means="a captioning model name")
    max_new_tokens: int = param_field(CaptionParams, "max_new_tokens", 40)


@dataclass(frozen=True)
class PatchesConfig:
    """The patch selection of the composite recipe (``patches.size``, ``n_low``, ``n_high``)."""

    size: int = param_field(PatchParams, "size")
    n_low: int = param_field(PatchParams, "n_low")
    n_high: int = param_field(PatchParams, "n_high")

    def spec(self) -> PatchSpec:
        return PatchSpec(self.size, self.n_low, self.n_high)


@dataclass(frozen=True)
class RecipeFacts:
    """A baseline's recipe: its ``name`` and, for ``clip_layers``, the blocks read
    (``recipes.layers``: block indices, or ``all``); its backbone is ``backbones.clip``."""

    name: str = checked_field(registry=RECIPES)
    layers: tuple[int, ...] | str = "all"


@dataclass(frozen=True)
class Backbones:
    """What ``predict`` runs to make the head's input: the CLIP, and the captioner and patch
    spec (composite recipe) or the baseline's recipe."""

    clip: ClipFacts
    caption: CaptionFacts | None = None
    patches: PatchesConfig | None = None
    recipe: RecipeFacts | None = None


@dataclass(frozen=True)
class BundleDecision:
    """The decision fit on the validation split (``nsnet.heads.decision``), the uncertain band
    around its threshold (``evaluate.uncertain_band``) and the validation report."""

    threshold: float = checked_field(0.5, lo=0.0, hi=1.0)
    rule: str = "0.5"  # evaluate.threshold as given: a number or val_acc, val_eer, val_fpr:<x>
    calibration: str = param_field(EvaluateParams, "calibration", "none")
    scale: float = 1.0
    shift: float = 0.0
    uncertain_band: float = param_field(EvaluateParams, "uncertain_band", 0.0)
    n_val: int | None = checked_field(None, lo=0)
    val_ece_raw: float | None = checked_field(None, nan=True)  # NaN without validation rows
    val_ece: float | None = checked_field(None, nan=True)

    @classmethod
    def of(cls, decision: Decision, uncertain_band: float, report: dict[str, Any] | None = None
           ) -> BundleDecision:
        return cls(**decision.to_json(), uncertain_band=uncertain_band, **(report or {}))

    def as_decision(self) -> Decision:
        return Decision(self.threshold, self.rule, self.calibration, self.scale, self.shift)


@dataclass(frozen=True)
class ViewsConfig:
    """The patch-order views the head was trained on (``patches.views``) and how scoring combines
    their logits (``evaluate.view_average``)."""

    count: int = param_field(PatchParams, "views", 1)
    average: str = param_field(EvaluateParams, "view_average", "mean_logit")


@dataclass(frozen=True)
class BundleConfig:
    """A bundle's ``config.json``. ``weights_blake2b`` (the weights' hash) is set by
    ``save_bundle``."""

    head: HeadConfig
    backbones: Backbones | None = None  # None: a bare head (predict needs them)
    decision: BundleDecision = BundleDecision()
    views: ViewsConfig = ViewsConfig()
    training: TrainingRecord | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    weights_blake2b: str = checked_field("", pattern=r"[0-9a-f]{32}",
                                         means="a 32-digit hex hash")

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` mapping (format ``FORMAT_VERSION``)."""
        return {"format_version": FORMAT_VERSION, **to_plain(self)}


def parse_config(data: Any, where: str | Path = CONFIG) -> BundleConfig:
    """Validate a ``config.json`` mapping into a ``BundleConfig``; raise ``BundleError`` naming
    ``where`` and the key. A bundle is untrusted input: every field is checked here, once."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: top level: expected a mapping, got {type(data).__name__}")
    version = data.get("format_version")
    if type(version) is not int or version not in FORMATS_READ:
        raise BundleError(
            f"{where}: format_version: unsupported bundle format {version!r} (this nsnet reads "
            f"formats {', '.join(map(str, FORMATS_READ))}); a newer release may have written it: "
            "upgrade, or retrain with `nsnet train`")
    if not isinstance(data.get("weights_blake2b"), str):
        raise BundleError(f"{where}: weights_blake2b: missing or not a 32-digit hex hash, so the "
                          "weights cannot be checked; refusing to load them (retrain with "
                          "`nsnet train`)")
    try:
        body = from_format_1(data) if version == 1 else data
        config = build_section(BundleConfig, {k: v for k, v in body.items()
                                              if k != "format_version"})
        check_config(config)
    except ParamsError as exc:
        old = " (a format-1 bundle, read in format 2's terms)" if version == 1 else ""
        raise BundleError(f"{where}{old}: {exc}") from exc
    return config


def check_config(c: BundleConfig) -> None:
    """What one field's check cannot see: the head's recipe and row shape fit its name and
    width, and the backbones are those of that recipe."""
    head = c.head
    if head.recipe != method(head.name).recipe:
        raise ParamsError(f"head.recipe: {head.recipe!r}, but the {head.name} head reads "
                          f"{method(head.name).recipe!r}")
    shape = head.shape
    if not 1 <= len(shape) <= 2 or min(shape) < 1 or shape[-1] != head.dim:
        raise ParamsError(f"head.row_shape: {list(shape)} is not [dim] or [blocks, dim] with "
                          f"dim {head.dim}")
    if c.backbones is not None:
        _check_backbones(c.backbones, head.recipe)


def _check_backbones(bb: Backbones, recipe: str) -> None:
    if RECIPES.get(recipe).patch_orders:  # the patch composite's chain: captioner, patches
        for key in ("caption", "patches"):
            if getattr(bb, key) is None:
                raise ParamsError(f"backbones.{key}: missing (the {recipe} recipe needs it)")
        assert bb.patches is not None
        count = bb.patches.n_low + bb.patches.n_high
        if count < 1 or round(math.sqrt(count)) ** 2 != count:
            raise ParamsError(f"backbones.patches: n_low + n_high = {count} is not a square "
                              "grid")
        return
    if bb.recipe is None or bb.recipe.name != recipe:
        raise ParamsError(f"backbones.recipe: missing, or not the {recipe} recipe")
    layers = bb.recipe.layers
    if (layers != "all") if isinstance(layers, str) else any(i < 0 for i in layers):
        raise ParamsError(f"backbones.recipe.layers: {layers!r} is not 'all' or a list of block "
                          "indices >= 0")


# ----------------------------------------------------------------------------- format 1
# Format 1 spelled keys its own way: head.kind / head.hparams, backbones.clip.clip_arch and
# clip_pretrained, backbones.blip, a top-level threshold and uncertain_band, training.views.
_V1_HEAD = {"kind": "name", "hparams": "train"}
_V1_CLIP = {"clip_arch": "arch", "clip_pretrained": "pretrained"}


def _section(data: dict[str, Any], key: str, optional: bool = False) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise ParamsError(f"{key}: missing or not a mapping")
    return value


def from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``config.json`` (written by nsnet before typed bundles) in format 2's layout;
    ``parse_config`` then validates it as any other."""
    out: dict[str, Any] = {k: v for k, v in old.items()
                           if k not in ("threshold", "uncertain_band", "backbones", "head",
                                        "decision", "training")}
    head = _section(old, "head")
    assert head is not None
    out["head"] = {_V1_HEAD.get(k, k): v for k, v in head.items()}
    name = out["head"].get("name")
    if isinstance(name, str):
        out["head"]["name"] = METHODS.current(name)  # a `ufd` bundle: composite_probe
    decision = dict(_section(old, "decision", optional=True) or {})
    if "threshold" in old:
        check_value("threshold", old["threshold"], BundleDecision, "threshold")
        if not decision:  # bundles older than calibration: the threshold alone
            decision = {"threshold": old["threshold"], "rule": f"{float(old['threshold']):g}"}
    if "uncertain_band" in old:
        decision["uncertain_band"] = old["uncertain_band"]
    if decision:
        out["decision"] = decision
    bb = _section(old, "backbones", optional=True)
    if bb is not None:
        out["backbones"] = _backbones_1(bb)
    training = _section(old, "training", optional=True)
    if training is not None:
        out["training"] = _training_1(training)
    return out


def _backbones_1(bb: dict[str, Any]) -> dict[str, Any]:
    out = {("caption" if k == "blip" else k): v for k, v in bb.items()}
    clip = _section(bb, "clip")
    assert clip is not None
    out["clip"] = {_V1_CLIP.get(k, k): v for k, v in clip.items() if v is not None}
    if out.get("patches") is None:
        out.pop("patches", None)
    recipe = out.get("recipe")
    if isinstance(recipe, dict):  # its backbone is backbones.clip (written there too)
        out["recipe"] = {k: v for k, v in recipe.items() if k != "backbone"}
    return out


def _training_1(training: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in training.items() if k != "views"}
    views = training.get("views", 1)  # rows per image drawn from: patch orders or crops
    recipe = training.get("recipe", "composite")
    if isinstance(recipe, str) and recipe in RECIPES and RECIPES.get(recipe).patch_orders:
        out["patch_views"] = views
    else:
        out["crops"] = views
    params = out.get("params")
    if isinstance(params, dict) and isinstance(params.get("head"), str):
        out["params"] = {**params, "head": METHODS.current(params["head"])}
    return out
