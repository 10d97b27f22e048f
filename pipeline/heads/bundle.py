"""Model bundles: ``model.safetensors`` (weights, no pickle) + ``config.json``.

The config names the head and its hyper-parameters, the backbones that made its input features
(CLIP arch/weights, BLIP model, patch spec), the decision threshold and the training
provenance, so ``predict`` can rebuild the exact feature chain from the bundle alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from pipeline.atomic import atomic_path, write_json
from pipeline.config import (
    CALIBRATIONS,
    HEAD_RECIPES,
    CaptionParams,
    ClipParams,
    EvaluateParams,
    ParamsError,
    PatchParams,
    TrainParams,
    build_section,
    check_value,
)
from pipeline.heads.detectors import HEADS, HPARAM_KEYS, RENAMED_HEADS, build_head

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1


def save_bundle(directory: str | Path, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write weights then config, each atomically (config last marks the bundle complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state)
    with atomic_path(directory / WEIGHTS) as tmp:
        tmp.write_bytes(blob)  # Python I/O: a full disk raises OSError, caught above
    write_json(directory / CONFIG, {"format_version": FORMAT_VERSION,
                                    "weights_blake2b": _digest(blob), **config})


def _digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class BundleError(ValueError):
    """A bundle's ``config.json`` is not one ``nsnet train`` could have written."""


def validate_config(config: Any, where: str | Path = CONFIG) -> dict[str, Any]:
    """Check every field a bundle is loaded and used from; raise ``BundleError`` naming the key.

    A bundle is untrusted input: a list instead of a mapping, a missing ``head``, a string
    where a number belongs, a zero patch size, a NaN threshold, unknown hparams or a missing
    weights hash are refused here with one message instead of a traceback later.
    """

    def fail(key: str, problem: str) -> BundleError:
        return BundleError(f"{where}: {key}: {problem}")

    if not isinstance(config, dict):
        raise fail("top level", f"expected a mapping, got {type(config).__name__}")
    if config.get("format_version") != FORMAT_VERSION:
        raise fail("format_version", f"unsupported bundle format {config.get('format_version')!r}"
                   f" (this nsnet reads {FORMAT_VERSION})")
    digest = config.get("weights_blake2b")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{32}", digest):
        raise fail("weights_blake2b", "missing or not a 32-digit hex hash, so the weights "
                   "cannot be checked; refusing to load them (retrain with `nsnet train`)")
    head = config.get("head")
    if not isinstance(head, dict):
        raise fail("head", "missing or not a mapping (needs kind, dim, hparams)")
    known, kind = list(HEADS), head.get("kind")
    if not isinstance(kind, str) or (kind not in known and kind not in RENAMED_HEADS):
        raise fail("head.kind", f"{head.get('kind')!r} is not one of {', '.join(known)}")
    dim = head.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise fail("head.dim", f"expected a positive integer, got {dim!r}")
    hparams = head.get("hparams", {})
    if isinstance(hparams, dict):
        unknown = sorted(set(hparams) - set(HPARAM_KEYS))
        if unknown:
            raise fail(f"head.hparams.{unknown[0]}", "unknown hyper-parameter (known: "
                       f"{', '.join(HPARAM_KEYS)})")
    try:
        build_section(TrainParams, hparams, "head.hparams.")
        if "threshold" in config:
            _probability("threshold", config["threshold"])
        if "uncertain_band" in config:
            check_value("uncertain_band", config["uncertain_band"], EvaluateParams,
                        "uncertain_band")
        if config.get("decision"):
            _validate_decision(config["decision"])
        _validate_head_recipe(head)
        if "backbones" in config:
            _validate_backbones(config["backbones"], head.get("recipe", "composite"))
    except ParamsError as exc:
        raise BundleError(f"{where}: {exc}") from exc
    return config


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _probability(key: str, value: Any) -> None:
    if not 0.0 <= _number(key, value) <= 1.0:
        raise ParamsError(f"{key}: {value!r} is out of range (must be in [0, 1])")


def _validate_decision(d: Any) -> None:
    """The calibrated decision (``pipeline.heads.decision.Decision``) stored at train time."""
    if not isinstance(d, dict):
        raise ParamsError(f"decision: expected a mapping, got {type(d).__name__}")
    for key in ("threshold", "rule", "calibration", "scale", "shift"):
        if key not in d:
            raise ParamsError(f"decision.{key}: missing")
    _probability("decision.threshold", d["threshold"])
    if d["calibration"] not in CALIBRATIONS:
        raise ParamsError(f"decision.calibration: {d['calibration']!r} is not one of "
                          f"{', '.join(CALIBRATIONS)}")
    if not isinstance(d["rule"], str):
        raise ParamsError(f"decision.rule: expected a string, got {d['rule']!r}")
    _number("decision.scale", d["scale"])
    _number("decision.shift", d["shift"])


def _validate_head_recipe(head: dict[str, Any]) -> None:
    """``head.recipe`` is the one its kind reads; ``head.row_shape`` fits ``head.dim``."""
    kind = RENAMED_HEADS.get(head["kind"], head["kind"])
    recipe = head.get("recipe", "composite")
    if recipe != HEAD_RECIPES[kind]:
        raise ParamsError(f"head.recipe: {recipe!r}, but the {kind} head reads "
                          f"{HEAD_RECIPES[kind]!r}")
    shape = head.get("row_shape", [head["dim"]])
    if not isinstance(shape, list) or not shape or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape) \
            or shape[-1] != head["dim"] or len(shape) > 2:
        raise ParamsError(f"head.row_shape: {shape!r} is not [dim] or [blocks, dim] with "
                          f"dim {head['dim']}")


def _validate_backbones(bb: Any, recipe: str = "composite") -> None:
    if not isinstance(bb, dict):
        raise ParamsError(f"backbones: expected a mapping, got {type(bb).__name__}")
    clip = bb.get("clip")
    if not isinstance(clip, dict):
        raise ParamsError("backbones.clip: missing or not a mapping")
    check_value("backbones.clip.clip_arch", clip.get("clip_arch"), ClipParams, "arch")
    if clip.get("clip_pretrained") is not None:
        check_value("backbones.clip.clip_pretrained", clip["clip_pretrained"], ClipParams,
                    "pretrained")
    if recipe != "composite":
        spec = bb.get("recipe")
        if not isinstance(spec, dict) or spec.get("name") != recipe:
            raise ParamsError(f"backbones.recipe: missing, or not the {recipe} recipe")
        layers = spec.get("layers", "all")
        if layers != "all" and (not isinstance(layers, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
            raise ParamsError(f"backbones.recipe.layers: {layers!r} is not 'all' or a list of "
                              "block indices")
        return
    blip, patches = bb.get("blip"), bb.get("patches")
    for key, value in (("backbones.blip", blip), ("backbones.patches", patches)):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: missing or not a mapping")
    check_value("backbones.blip.model", blip.get("model"), CaptionParams, "model")
    if "max_new_tokens" in blip:
        check_value("backbones.blip.max_new_tokens", blip["max_new_tokens"], CaptionParams,
                    "max_new_tokens")
    for name in ("size", "n_low", "n_high"):
        check_value(f"backbones.patches.{name}", patches.get(name), PatchParams, name)
    extra = sorted(set(patches) - {"size", "n_low", "n_high"})
    if extra:
        raise ParamsError(f"backbones.patches.{extra[0]}: unknown key")
    count = patches["n_low"] + patches["n_high"]
    if count < 1 or round(math.sqrt(count)) ** 2 != count:
        raise ParamsError(f"backbones.patches: n_low + n_high = {count} is not a square grid")


def load_bundle(directory: str | Path, device: str | torch.device = "cpu"
                ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a head from a bundle directory (safetensors only; no code is executed).

    Args:
        directory: a folder with ``config.json`` and ``model.safetensors`` (``nsnet train``
            writes ``models/detector``).
        device: where to put the head.

    Returns ``(head, config)``: the head in eval mode and the bundle's config (head kind and
    hparams, backbones, threshold, provenance).

    Raises:
        FileNotFoundError: not a bundle. BundleError (a ValueError): a config.json that is
            not valid (the message names the file and key), or weights that do not match the
            config's hash.

    Example::

        head, config = load_bundle("models/detector")
        probs = torch.sigmoid(head(image_features, text_features).logit)
    """
    directory = Path(directory)
    cfg_path, weights = directory / CONFIG, directory / WEIGHTS
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(
            f"{directory} is not a model bundle (needs {CONFIG} and {WEIGHTS}); train one with "
            "`nsnet train` or `dvc repro`"
        )
    try:
        config = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{cfg_path}: not valid JSON ({exc})") from exc
    validate_config(config, cfg_path)
    if _digest(weights.read_bytes()) != config["weights_blake2b"]:
        raise BundleError(
            f"{directory}: {WEIGHTS} does not match {CONFIG} (an interrupted or mixed save); "
            "retrain with `nsnet train` or restore the bundle"
        )
    head = config["head"]
    head["kind"] = RENAMED_HEADS.get(head["kind"], head["kind"])  # a `ufd` bundle: composite_probe
    shape = head.get("row_shape") or [head["dim"]]
    extra = {"n_layers": shape[0]} if len(shape) == 2 else {}  # RINE: its blocks
    model = build_head(head["kind"], head["dim"], **head.get("hparams", {}), **extra)
    try:
        state = load_file(str(weights))
        if "basis" in state:  # NS-Net: the basis width is data-dependent (k may be clipped)
            model.basis = torch.zeros_like(state["basis"])
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{weights}: the weights do not fit the head that {CONFIG} "
                          f"describes ({head['kind']}, dim {head['dim']}): {first}") from exc
    return model.to(device).eval(), config
