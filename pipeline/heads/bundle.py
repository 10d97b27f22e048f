"""Model bundles: ``model.safetensors`` (weights, no pickle) + ``config.json``.

The config names the head and its hyper-parameters, the backbones that made its input features
(CLIP arch/weights, BLIP model, patch spec), the decision threshold and the training
provenance, so ``predict`` can rebuild the exact feature chain from the bundle alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from pipeline.atomic import atomic_path, write_json
from pipeline.heads.detectors import build_head

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
        FileNotFoundError: not a bundle. ValueError: unknown format, or weights that do not
            match the config's hash.

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
    config = json.loads(cfg_path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: unsupported bundle format {config.get('format_version')}")
    expected = config.get("weights_blake2b")
    if expected and _digest(weights.read_bytes()) != expected:
        raise ValueError(
            f"{directory}: {WEIGHTS} does not match {CONFIG} (an interrupted or mixed save); "
            "retrain with `nsnet train` or restore the bundle"
        )
    head = config["head"]
    model = build_head(head["kind"], head["dim"], **head["hparams"])
    state = load_file(str(weights))
    if "basis" in state:  # NS-Net: the basis width is data-dependent (k may be clipped)
        model.basis = torch.zeros_like(state["basis"])
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config
