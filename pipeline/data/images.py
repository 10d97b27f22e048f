"""Decode any image a user may point us at into an RGB uint8 array, or say why not.

Handles EXIF orientation, grayscale, palette, RGBA/LA (alpha dropped, pixels kept as the
generator wrote them), CMYK, 16-bit and float images, and the first frame of animations. A size
limit guards against decompression bombs. Failures raise ``ImageError`` with a short reason code
that the manifest records:

* ``empty_file``    the file has 0 bytes
* ``not_an_image``  no image decoder recognises the bytes (e.g. a text or HTML file named .jpg)
* ``corrupt``       the decoder failed part-way (truncated download, broken data)
* ``too_large``     width x height exceeds ``data.max_image_pixels`` (decompression bomb guard)
* ``unreadable``    the operating system refused to read it (permissions, I/O error, link loop)
* ``missing``       the file disappeared between the folder scan and the read
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jfif", ".ppm", ".pgm"}
)


class ImageError(ValueError):
    """An image could not be used; ``reason`` is a short code stored in the manifest."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.uint32)
        hi = 65535 if mode != "I" or arr.max(initial=0) > 255 else 255
        arr8 = (arr.clip(0, hi) * 255 // hi).astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((np.nan_to_num(arr, nan=lo) - lo) * scale).round().astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, RGBA, CMYK, YCbCr, 1, ...
    return np.asarray(img, dtype=np.uint8).copy()


def read_bytes(path: str | Path) -> bytes:
    """Read a file's bytes, mapping OS failures to ``ImageError`` reasons."""
    try:
        return Path(path).read_bytes()
    except PermissionError as exc:
        raise ImageError("unreadable", f"permission denied: {exc.filename}") from exc
    except FileNotFoundError as exc:
        raise ImageError("missing", f"file not found: {exc.filename}") from exc
    except IsADirectoryError as exc:
        raise ImageError("not_an_image", "is a directory") from exc
    except OSError as exc:
        raise ImageError("unreadable", f"{type(exc).__name__}: {exc}") from exc


def open_image(
    source: str | Path | bytes, max_pixels: int = 178_956_970
) -> tuple[np.ndarray, ImageInfo]:
    """Fully decode a path or raw bytes to an (H, W, 3) uint8 array, EXIF-oriented."""
    data = source if isinstance(source, bytes) else read_bytes(source)
    if not data:
        raise ImageError("empty_file", "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                with Image.open(io.BytesIO(data)) as img:
                    if img.width * img.height > max_pixels:
                        raise ImageError(
                            "too_large",
                            f"{img.width}x{img.height} exceeds data.max_image_pixels={max_pixels}",
                        )
                    fmt = img.format or ""
                    src_mode = img.mode
                    if getattr(img, "n_frames", 1) > 1:
                        img.seek(0)
                    img.load()
                    oriented = ImageOps.exif_transpose(img)
                    arr = _to_rgb_array(oriented)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_large", str(exc)) from exc
    except MemoryError as exc:
        raise ImageError("too_large", "not enough memory to decode this image") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not_an_image", f"not a decodable image ({len(data)} bytes)") from exc
    except Exception as exc:  # noqa: BLE001 - decoders of web files raise all kinds of errors
        raise ImageError("corrupt", f"{type(exc).__name__}: {exc}") from exc
    h, w = arr.shape[:2]
    return arr, ImageInfo(width=w, height=h, mode=src_mode, format=fmt)
