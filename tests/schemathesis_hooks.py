"""Schemathesis hooks for the fuzz test (loaded through ``SCHEMATHESIS_HOOKS``): every
``format: binary`` value it generates is a real image, so positive cases upload pictures the
detector can score (random bytes would only ever test the 415 path)."""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def encoded(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    """Random RGB pixels of ``size`` (width, height), encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


IMAGES = [encoded((64, 64), "PNG", 0), encoded((96, 48), "PNG", 1), encoded((40, 72), "PNG", 2),
          encoded((80, 80), "JPEG", 3)]

schemathesis.openapi.format("binary", st.sampled_from(IMAGES))
