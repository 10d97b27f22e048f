"""Schemathesis hooks for the fuzz test (loaded through ``SCHEMATHESIS_HOOKS``): the upload parts
are real images, so positive cases upload pictures the detector can score (schemathesis's own
bytes, 1x1 samples or random, would only ever test the 4xx paths).

``NSNET_FUZZ_PARTS`` picks how. Unset or ``format``: every ``format: binary`` value is an image,
so a body holds 1 to ``maxItems`` files. ``media-type``: an image of each media type that the
spec's ``encoding`` declares for the part, as ``schemathesis.openapi.media_type`` users fill
parts; schemathesis then sends one part with that Content-Type and no filename.
"""

from __future__ import annotations

import io
import os

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def encoded(size: tuple[int, int], fmt: str, seed: int, mode: str = "RGB") -> bytes:
    """Random pixels of ``size`` (width, height) in ``mode``, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buf, fmt)
    return buf.getvalue()


IMAGES = [encoded((64, 64), "PNG", 0), encoded((96, 48), "PNG", 1), encoded((40, 72), "PNG", 2),
          encoded((80, 80), "JPEG", 3)]
# One image per media type nsnet decodes (the spec's `encoding`), in that format.
MEDIA_IMAGES = {
    media_type: encoded((48 + 8 * i, 40), fmt, 10 + i, mode)
    for i, (media_type, fmt, mode) in enumerate([
        ("image/png", "PNG", "RGB"), ("image/jpeg", "JPEG", "RGB"), ("image/webp", "WEBP", "RGB"),
        ("image/gif", "GIF", "RGB"), ("image/bmp", "BMP", "RGB"), ("image/tiff", "TIFF", "RGB"),
        ("image/x-portable-pixmap", "PPM", "RGB"), ("image/x-portable-graymap", "PPM", "L")])}

if os.environ.get("NSNET_FUZZ_PARTS", "format") == "media-type":
    for media_type, data in MEDIA_IMAGES.items():
        schemathesis.openapi.media_type(media_type, st.just(data))
else:
    schemathesis.openapi.format("binary", st.sampled_from(IMAGES))
