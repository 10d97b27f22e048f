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
* ``missing``       the file disappeared between the folder scan and the read (or a dangling
                    symlink)
* ``unsupported_format``  the name's extension is not one we decode (``.heic``, ``.txt``, ...)

A PNG's chunk checksums (CRC-32) are verified as well, so damage that Pillow tolerates is
reported as ``corrupt`` rather than scored. Decoder warnings (Pillow, numpy) are re-issued on
stderr as one line naming the file (``decode_file``).
"""

from __future__ import annotations

import io
import os
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jfif", ".ppm", ".pgm"}
)


UNSUPPORTED = "unsupported_format"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def display_path(path: str | os.PathLike[str]) -> str:
    """A printable path: bytes of a non-UTF-8 name are backslash-escaped (``\\xff``)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def unsupported_reason(path: str | os.PathLike[str]) -> str | None:
    """Why a file is not decoded because of its name, or None for an image extension."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return None
    what = f"extension {display_path(suffix)!s}" if suffix else "no extension"
    return (f"{what}: not an image format nsnet decodes (supported: "
            f"{' '.join(sorted(IMAGE_EXTENSIONS))})")


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


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB (16-bit and float images rescaled)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.uint32)
        hi = 65535 if mode != "I" or arr.max(initial=0) > 255 else 255
        arr8 = (arr.clip(0, hi) * 255 // hi).astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        finite = np.isfinite(arr)
        if not finite.any():
            raise ImageError("corrupt", "a float image without one finite pixel value")
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((np.where(finite, arr, lo) - lo) * scale).round().astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, RGBA, CMYK, YCbCr, 1, ...
    return np.asarray(img, dtype=np.uint8).copy()


def check_png_crc(data: bytes) -> None:
    """Raise ``ImageError('corrupt')`` if a PNG chunk fails its CRC-32 or runs past the end."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            raise ImageError("corrupt", f"PNG chunk {ctype.decode('latin-1')!r} is truncated")
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            raise ImageError("corrupt", f"PNG chunk {ctype.decode('latin-1')!r} fails its CRC "
                                        "check (the file is damaged)")
        if ctype == b"IEND":
            return
        pos = end


def read_bytes(path: str | Path) -> bytes:
    """Read a file's bytes, mapping OS failures to ``ImageError`` reasons."""
    try:
        return Path(path).read_bytes()
    except PermissionError as exc:
        raise ImageError("unreadable", f"permission denied: {display_path(path)}") from exc
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise ImageError("missing", "dangling symlink (its target does not exist): "
                                        f"{display_path(os.readlink(path))}") from exc
        raise ImageError("missing", f"file not found: {display_path(path)}") from exc
    except IsADirectoryError as exc:
        raise ImageError("not_an_image", "is a directory, not a file") from exc
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
                    arr = to_rgb_array(oriented)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        if fmt == "PNG" or data.startswith(PNG_SIGNATURE):
            check_png_crc(data)
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


def decode_file(path: str | Path, max_pixels: int = 178_956_970
                ) -> tuple[bytes, np.ndarray, ImageInfo]:
    """Read and decode one file; its decoder warnings go to stderr as one line naming it.

    Raises ``ImageError`` (with ``unsupported_format`` for a name we do not decode) and never
    lets a decoder warning reach the terminal without the file that caused it.
    """
    reason = unsupported_reason(path)
    if reason and not Path(path).is_dir():
        raise ImageError(UNSUPPORTED, reason)
    data = read_bytes(path)
    rgb, info = decode_data(data, path, max_pixels)
    return data, rgb, info


def decode_data(data: bytes, path: str | os.PathLike[str], max_pixels: int = 178_956_970
                ) -> tuple[np.ndarray, ImageInfo]:
    """``open_image`` on bytes read from ``path``; warnings are printed with the path."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return open_image(data, max_pixels)
        finally:
            for w in caught:
                print(f"warning: {display_path(path)}: {w.category.__name__}: {w.message}",
                      file=sys.stderr)


# The code that turns a file's bytes into the pixels every cached feature is computed from
# (``nsnet.provenance.code_fingerprint``): editing it invalidates the feature store.
PIXEL_CODE = (open_image, to_rgb_array)
