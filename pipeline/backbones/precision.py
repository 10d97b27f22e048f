"""Numeric precision of the frozen backbones: ``compute.precision`` in one place.

``amp_dtype("fp16")`` is the autocast dtype a precision name means; ``autocast(device, dtype)``
applies it on CUDA and is a no-op elsewhere (CPU inference always runs in float32).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16,
}
__all__ = ["PRECISIONS", "amp_dtype", "autocast"]


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``compute.precision`` (``None`` for fp32)."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose one of "
                         f"{', '.join(PRECISIONS)}") from None


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` on CUDA with ``dtype``; a null context on CPU or for fp32."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
