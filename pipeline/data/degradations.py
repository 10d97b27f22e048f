"""Test-time degradations of GenImage's robustness protocol, deterministic on uint8 RGB arrays.

Names (``protocol.degradations``):

* ``jpeg<q>``    JPEG re-encode in memory at quality ``q`` (1..100; GenImage: 65, 30), PIL's
  libjpeg with its default 4:2:0 chroma subsampling, then decoded back to RGB.
* ``resize<n>``  the whole image resized to ``n`` x ``n`` pixels (GenImage: 112, 64), PIL
  bicubic, which low-pass filters (antialiases) when it shrinks. GenImage resizes to a square,
  so the aspect ratio is not kept.
* ``blur<s>``    Gaussian blur with standard deviation ``s`` pixels (GenImage: 3, 5) on each
  channel, ``scipy.ndimage.gaussian_filter`` (kernel truncated at 4 sigma, reflected borders).

Each function is a pure function of the pixels, so a degraded copy of an image is computed once
(``nsnet extract``, from the image's one decode) and its features kept in the store.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from nsnet.config import (  # the name grammar is a parameter format, parsed in config
    GENIMAGE_DEGRADATIONS,
    Degradation,
    DegradationError,
    parse_degradation,
)

__all__ = ["GENIMAGE_DEGRADATIONS", "Degradation", "DegradationError", "apply", "blur", "jpeg",
           "parse", "resize"]



def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def resize(rgb: np.ndarray, side: int) -> np.ndarray:
    img = Image.fromarray(rgb).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).copy()


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    out = gaussian_filter(rgb.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect",
                          truncate=4.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_FUNCS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "jpeg": lambda rgb, v: jpeg(rgb, int(v)),
    "resize": lambda rgb, v: resize(rgb, int(v)),
    "blur": blur,
}


def parse(name: str) -> Degradation:
    """Validate a degradation name (see ``nsnet.config.parse_degradation``)."""
    return parse_degradation(name)


def apply(name: str, rgb: np.ndarray) -> np.ndarray:
    """Degrade one (H, W, 3) uint8 image by name ("" = unchanged)."""
    if not name:
        return rgb
    spec = parse_degradation(name)
    return _FUNCS[spec.kind](rgb, spec.value)
