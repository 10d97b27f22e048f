"""Test-time degradations of GenImage's robustness protocol, deterministic on uint8 RGB arrays.

Names (``protocol.degradations``):

* ``jpeg<q>``    JPEG re-encode in memory at quality ``q`` (1..100; GenImage: 65, 30), PIL's
  libjpeg with its default 4:2:0 chroma subsampling, then decoded back to RGB.
* ``resize<n>``  the whole image resized to ``n`` x ``n`` pixels (GenImage: 112, 64), PIL
  bicubic, which low-pass filters (antialiases) when it shrinks. GenImage resizes to a square,
  so the aspect ratio is not kept.
* ``blur<s>``    Gaussian blur with standard deviation ``s`` pixels (GenImage: 3, 5) on each
  channel, ``scipy.ndimage.gaussian_filter`` (kernel truncated at 4 sigma, reflected borders).

Each function is a pure function of the pixels, so a degraded view is computed once and cached.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

GENIMAGE_DEGRADATIONS = ("jpeg65", "jpeg30", "resize112", "resize64", "blur3", "blur5")
_NAME = re.compile(r"^(jpeg|resize|blur)(\d+(?:\.\d+)?)$")


class DegradationError(ValueError):
    """A degradation name is not understood or its value is out of range."""


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


@dataclass(frozen=True)
class Degradation:
    """A parsed degradation name, e.g. ``jpeg65`` -> kind ``jpeg``, value 65."""

    name: str
    kind: str
    value: float

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return _FUNCS[self.kind](rgb, self.value)

    def output_side(self) -> int | None:
        """The side of every output image when the degradation fixes it (resize), else None."""
        return int(self.value) if self.kind == "resize" else None


_FUNCS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "jpeg": lambda rgb, v: jpeg(rgb, int(v)),
    "resize": lambda rgb, v: resize(rgb, int(v)),
    "blur": blur,
}


def parse(name: str) -> Degradation:
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


def apply(name: str, rgb: np.ndarray) -> np.ndarray:
    """Degrade one (H, W, 3) uint8 image by name ("" = unchanged)."""
    return parse(name)(rgb) if name else rgb
