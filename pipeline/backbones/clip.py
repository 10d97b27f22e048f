"""CLIP backbones: the real open_clip models and a tiny random one for tests and the demo.

``load_clip(arch, pretrained)`` is the one place a CLIP model is built. ``arch="tiny"`` builds
``nsnet-tiny-clip`` (2-layer towers, 128-d embeddings) from the config shipped in
``pipeline/backbones/configs`` with a fixed seed; its tokenizer is open_clip's BPE tokenizer, whose
vocabulary ships inside the open_clip package, so it works offline.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsnet.backbones.availability import (
    CLIP_FILE_HELP,
    CLIP_HELP,
    ModelUnavailable,
    ensure_offline_if_unreachable,
    first_line,
    quiet_root_logging,
)
from nsnet.backbones.precision import autocast

TINY_ARCH = "tiny"
TINY_NAME = "nsnet-tiny-clip"
TINY_SEED = 0
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class ClipBackbone:
    model: Any
    tokenizer: Any
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    embed_dim: int
    device: torch.device
    # what identifies the loaded model beyond its settings (clip.arch, clip.pretrained): the
    # weights' hash or source, the open_clip release, preprocessing and width
    provenance: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def encode_images(self, composites: np.ndarray, amp_dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
        """(B, S, S, 3) uint8 composites -> (B, d) float32 image embeddings (not normalised)."""
        x = torch.from_numpy(composites).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size:
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False
            ).clamp_(0, 1)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        with autocast(self.device, amp_dtype):
            return self.model.encode_image(x).float()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Captions -> (B, d) float32 text embeddings (not normalised)."""
        tokens = self.tokenizer(texts).to(self.device)
        with autocast(self.device, amp_dtype):
            return self.model.encode_text(tokens).float()


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def file_digest(path: str | os.PathLike[str], limit: int | None = None) -> str:
    """blake2b of a weights file (streamed), used as its provenance."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        read = 0
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            read += len(chunk)
            if limit and read >= limit:
                break
    return h.hexdigest()


def _register_tiny() -> None:
    import open_clip

    if TINY_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def open_clip_version() -> str:
    """The installed open_clip release (2.2x has no ``open_clip.__version__``)."""
    from importlib.metadata import version

    import open_clip

    return getattr(open_clip, "__version__", None) or version("open_clip_torch")


def safe_load_kwargs(create_model: Any) -> dict[str, bool]:
    """The keyword that makes ``create_model`` load checkpoints with ``weights_only=True``.

    open_clip 3.x calls it ``weights_only``, 2.3x ``load_weights_only``; older 2.x releases have
    neither and call ``torch.load`` with torch's default, which is ``weights_only=True`` from
    torch 2.6 on (the floor in ``pyproject.toml``). Passing a keyword a release does not know
    would reach the model constructor and fail, so the signature decides.
    """
    params = inspect.signature(create_model).parameters
    for name in ("weights_only", "load_weights_only"):
        if name in params:
            return {name: True}
    return {}


def _build(arch: str, pretrained: str, device: torch.device) -> tuple[Any, dict[str, Any]]:
    import open_clip

    if arch == TINY_ARCH:
        if pretrained:
            raise ModelUnavailable(
                f"clip.arch 'tiny' is a random built-in backbone; clip.pretrained must be empty "
                f"(got {pretrained!r})"
            )
        _register_tiny()
        state = torch.random.get_rng_state()
        torch.manual_seed(TINY_SEED)
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # open_clip warns that no weights were loaded: intended
        try:
            model = open_clip.create_model(TINY_NAME, pretrained=None, device=device)
        finally:
            quiet.setLevel(level)
            torch.random.set_rng_state(state)
        return model, {"weights": f"random-init(seed={TINY_SEED})", "open_clip_name": TINY_NAME}
    if arch not in open_clip.list_models():
        raise ModelUnavailable(
            f"unknown clip.arch {arch!r}; use 'tiny' or an open_clip architecture such as "
            f"ViT-L-14 (see open_clip.list_models())"
        )
    if pretrained and os.path.isfile(pretrained):
        weights = {"weights": f"file:{Path(pretrained).name}",
                   "weights_blake2b": file_digest(pretrained)}
    elif pretrained:
        if not open_clip.get_pretrained_cfg(arch, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ModelUnavailable(
                f"clip.pretrained {pretrained!r} is neither a file nor a known tag for {arch} "
                f"(known tags: {', '.join(tags) or 'none'})"
            )
        weights = {"weights": f"open_clip:{arch}/{pretrained}"}
    else:
        raise ModelUnavailable(
            f"clip.pretrained is empty for {arch!r}: a random CLIP gives meaningless features. "
            "Set a pretrained tag (e.g. openai) or a checkpoint path, or use clip.arch: tiny."
        )
    local = os.path.isfile(pretrained)
    online = True if local else ensure_offline_if_unreachable()
    try:
        # open_clip loads local checkpoint files with torch.load(weights_only=True).
        with quiet_root_logging():
            model = open_clip.create_model(arch, pretrained=pretrained, device=device,
                                           **safe_load_kwargs(open_clip.create_model))
    except Exception as exc:  # noqa: BLE001 - re-raised with instructions
        if local:
            raise ModelUnavailable(CLIP_FILE_HELP.format(path=pretrained, arch=arch,
                                                         cause=first_line(exc))) from exc
        why = "" if online else " (the Hugging Face hub is not reachable from here)"
        raise ModelUnavailable(
            CLIP_HELP.format(arch=arch, pretrained=pretrained, why=why) + f"\nCause: {exc}"
        ) from exc
    return model, weights


@functools.lru_cache(maxsize=4)
def load_clip(arch: str, pretrained: str = "", device: str = "auto") -> ClipBackbone:
    """Build (once per process) a frozen CLIP in eval mode with its own normalisation.

    Args:
        arch: an open_clip architecture (``ViT-L-14``, the reference) or ``tiny`` (a small
            randomly initialised CLIP from ``backbones/configs``, seeded, for tests and demos).
        pretrained: an open_clip pretrained tag (``openai``), a local checkpoint path, or ""
            with ``tiny``. Weights come from the Hugging Face cache; set ``HF_HUB_OFFLINE=1`` to
            never touch the network.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns a ``ClipBackbone`` with ``encode_images`` / ``encode_texts``, ``embed_dim``, the
    model's own mean/std and a ``provenance`` dict (arch, weights hash, library version).

    Raises:
        ModelUnavailable: the weights are neither cached nor reachable; the message says how to
            fetch them (``hf download`` or a checkpoint path). It fails at once, never hangs.

    Example::

        clip = load_clip("ViT-L-14", "openai", device="cuda")
        feats = clip.encode_images(composites_uint8)  # (n, 768)
    """
    import open_clip

    dev = resolve_device(device)
    model, weights = _build(arch, pretrained, dev)
    model.eval().requires_grad_(False)
    name = TINY_NAME if arch == TINY_ARCH else arch
    pp = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") and \
        model.text_projection is not None else int(model.visual.output_dim)
    provenance = {  # facts beyond the settings (clip.arch, clip.pretrained) it was loaded by
        **weights,
        "open_clip": open_clip_version(),
        "mean": list(mean),
        "std": list(std),
        "image_size": size,
        "embed_dim": embed_dim,
    }
    return ClipBackbone(model=model, tokenizer=open_clip.get_tokenizer(name), mean=mean, std=std,
                        image_size=size, embed_dim=embed_dim, device=dev, provenance=provenance)


# The code that defines the cached embeddings (``nsnet.provenance.code_fingerprint``).
_MODEL_CODE = (load_clip, _build, _register_tiny, CONFIG_DIR / f"{TINY_NAME}.json")
IMAGE_CODE = (ClipBackbone.encode_images, *_MODEL_CODE)
TEXT_CODE = (ClipBackbone.encode_texts, *_MODEL_CODE)
