"""Model bundles: ``model.safetensors`` (weights, no pickle) + ``config.json``.

The config (``nsnet.heads.bundle_config.BundleConfig``) names the head and its settings, the
backbones that made its input features (CLIP arch/weights, the captioner, the patch spec), the
decision and the training provenance, so ``predict`` can rebuild the exact feature chain from
the bundle alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from nsnet.atomic import atomic_path, write_json
from nsnet.heads.bundle_config import (
    CONFIG,
    FORMAT_VERSION,
    BundleConfig,
    BundleError,
    parse_config,
)
from nsnet.heads.method import build_head

WEIGHTS = "model.safetensors"
__all__ = ["CONFIG", "FORMAT_VERSION", "WEIGHTS", "BundleConfig", "BundleError", "load_bundle",
           "read_config", "save_bundle"]


def save_bundle(directory: str | Path, model: torch.nn.Module, config: BundleConfig) -> None:
    """Write weights then config, each atomically (config last marks the bundle complete).

    The config is validated as ``load_bundle`` validates it, so a bundle that is written loads.
    """
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state)
    config = dataclasses.replace(config, weights_blake2b=_digest(blob))
    data = config.to_json()
    parse_config(data, directory / CONFIG)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS) as tmp:
        tmp.write_bytes(blob)  # Python I/O: a full disk raises OSError, caught above
    write_json(directory / CONFIG, data)


def _digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def read_config(directory: str | Path) -> BundleConfig:
    """The validated ``config.json`` of a bundle directory (its weights are not read).

    Raises ``FileNotFoundError`` (no config.json) or ``BundleError`` (not valid)."""
    path = Path(directory) / CONFIG
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} is not a model bundle (needs {CONFIG}); train "
                                "one with `nsnet train` or `dvc repro`") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return parse_config(data, path)


def load_bundle(directory: str | Path, device: str | torch.device = "cpu"
                ) -> tuple[torch.nn.Module, BundleConfig]:
    """Rebuild a head from a bundle directory (safetensors only; no code is executed).

    Args:
        directory: a folder with ``config.json`` and ``model.safetensors`` (``nsnet train``
            writes ``models/detector``).
        device: where to put the head.

    Returns ``(head, config)``: the head in eval mode and the bundle's ``BundleConfig`` (head
    and its settings, backbones, decision, views, training, provenance).

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
    config = read_config(directory)
    if _digest(weights.read_bytes()) != config.weights_blake2b:
        raise BundleError(
            f"{directory}: {WEIGHTS} does not match {CONFIG} (an interrupted or mixed save); "
            "retrain with `nsnet train` or restore the bundle"
        )
    head = config.head
    extra = {"n_layers": head.shape[0]} if len(head.shape) == 2 else {}  # RINE: its blocks
    model = build_head(head.name, head.dim, **head.train.as_kwargs(), **extra)
    try:
        state = load_file(str(weights))
        if "basis" in state:  # NS-Net: the basis width is data-dependent (k may be clipped)
            model.basis = torch.zeros_like(state["basis"])
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{weights}: the weights do not fit the head that {CONFIG} "
                          f"describes ({head.name}, dim {head.dim}): {first}") from exc
    return model.to(device).eval(), config
