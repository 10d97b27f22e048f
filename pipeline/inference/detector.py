"""The detector as a Python object: load a bundle once, score and explain images in memory.

``Detector`` wraps the chain of ``nsnet predict`` (``load_chain`` + ``score_decoded``), so an
image scores exactly as ``nsnet predict`` scores it, whether it arrives as a path, encoded
bytes, a PIL image or a numpy array.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsnet.data.images import ImageError, to_rgb_array
from nsnet.data.manifest import content_id
from nsnet.inference.predict import (
    Chain,
    Decoded,
    _decode,
    check_size,
    decode_bytes,
    load_chain,
    new_row,
    score_decoded,
)
from nsnet.reports.explanation import Explanation

Item = Any  # str | Path | bytes | PIL.Image.Image | np.ndarray


def array_id(rgb: np.ndarray) -> str:
    """Content id of decoded pixels (shape + bytes), for inputs that have no file bytes."""
    return content_id(f"{rgb.shape}".encode() + np.ascontiguousarray(rgb).tobytes())


def as_rgb(array: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 copy of an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array.

    Raises ``ImageError("not_an_image", ...)`` for any other shape or dtype.
    """
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ImageError("not_an_image", f"array dtype {a.dtype}: pass uint8 pixels (0-255)")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError("not_an_image", f"array shape {a.shape}: expected (H, W), (H, W, 1), "
                                         "(H, W, 3) or (H, W, 4)")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3]).copy()


class Detector:
    """A loaded bundle (head + the backbones it names), ready to score images.

    Example::

        from nsnet import Detector
        det = Detector.load("models/detector", device="cpu")
        table = det.predict(["photo.jpg", pil_image, numpy_rgb])  # a pandas DataFrame
        table[["path", "prob", "label", "caption"]]
        ex = det.explain("photo.jpg")  # per-patch occlusion attribution
        ex.prob, ex.label, ex.top(3)

    Paths and bytes are identified by the hash of their bytes (as ``nsnet predict`` does), so
    they score exactly as the files do; PIL images and arrays by the hash of their pixels.
    """

    def __init__(self, chain: Chain, max_pixels: int = 178_956_970, batch_size: int = 16,
                 bundle_dir: str | Path = "") -> None:
        self.chain = chain
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.bundle_dir = str(bundle_dir)

    @classmethod
    def load(cls, bundle_dir: str | Path = "models/detector", device: str = "auto",
             precision: str = "fp32", threshold: float | None = None,
             max_pixels: int = 178_956_970, batch_size: int = 16) -> Detector:
        """Load the bundle written by ``nsnet train`` and the backbones its config names.

        ``device`` is ``auto | cpu | cuda | cuda:N``; ``threshold`` overrides the bundle's.
        Raises ``FileNotFoundError``/``ValueError`` for a broken bundle and
        ``ModelUnavailable`` when a backbone's weights are missing.

        Example::

            det = Detector.load("models/detector", device="cuda", precision="fp16")
        """
        chain = load_chain(bundle_dir, device, precision, threshold)
        return cls(chain, max_pixels, batch_size, bundle_dir)

    @property
    def threshold(self) -> float:
        return self.chain.threshold

    def decode(self, item: Item, name: str | None = None) -> Decoded:
        """A result row and the RGB array of one input (``None`` + a status if unusable)."""
        min_side = self.chain.min_side
        if isinstance(item, (str, Path)):
            return _decode(Path(item), self.max_pixels, min_side)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return decode_bytes(bytes(item), name or "<bytes>", self.max_pixels, min_side)
        row = new_row(name or f"<{type(item).__name__}>")
        try:
            rgb = self._pixels(item)
            row["id"] = array_id(rgb)
        except ImageError as exc:
            row.update(status=exc.reason, error=exc.detail)
            return row, None
        return check_size(row, rgb, rgb.shape[1], rgb.shape[0], min_side)

    def _pixels(self, item: Item) -> np.ndarray:
        from PIL import Image, ImageOps

        if isinstance(item, Image.Image):
            if item.width * item.height > self.max_pixels:
                raise ImageError("too_large", f"{item.width}x{item.height} exceeds "
                                              f"max_pixels={self.max_pixels}")
            return to_rgb_array(ImageOps.exif_transpose(item))
        if isinstance(item, np.ndarray):
            if item.ndim >= 2 and item.shape[0] * item.shape[1] > self.max_pixels:
                raise ImageError("too_large", f"{item.shape[1]}x{item.shape[0]} exceeds "
                                              f"max_pixels={self.max_pixels}")
            return as_rgb(item)
        raise ImageError("not_an_image", f"cannot read a {type(item).__name__}: pass a path, "
                                         "bytes, a PIL image or a numpy array")

    def predict(self, items: Item | Iterable[Item], names: Iterable[str] | None = None
                ) -> pd.DataFrame:
        """Score one input or many; one row each, the columns of ``nsnet predict``.

        Unusable inputs get a ``status`` and ``error`` instead of a probability.

        Example::

            det.predict("photo.jpg").loc[0, "prob"]
            det.predict([np.zeros((64, 64, 3), np.uint8), "a.png"])["label"].tolist()
        """
        batch = [items] if _is_single(items) else list(items)
        labels = list(names) if names is not None else [None] * len(batch)
        if len(labels) != len(batch):
            raise ValueError(f"{len(labels)} names for {len(batch)} items")
        return self.predict_decoded([self.decode(x, n) for x, n in zip(batch, labels,
                                                                        strict=True)])

    def predict_decoded(self, decoded: list[Decoded]) -> pd.DataFrame:
        """Score inputs already passed through ``decode`` (the server's batches)."""
        return score_decoded(self.chain, decoded, self.batch_size)

    def explain(self, image: Item, name: str | None = None) -> Explanation:
        """Occlusion attribution of the 49 selected patches of one image (``nsnet explain``).

        Raises ``ImageError`` when the image cannot be used.

        Example::

            ex = det.explain("photo.jpg")
            print(ex.prob, ex.label, ex.caption, [p.contribution for p in ex.top(3)])
        """
        from nsnet.inference.explain import explain_array

        row, rgb = self.decode(image, name)
        if rgb is None:
            raise ImageError(row["status"], row["error"])
        return explain_array(self.chain, rgb, row["id"], row["path"])

    def describe(self) -> dict[str, Any]:
        """What the bundle is: head, backbones, patch spec, threshold, training provenance."""
        return {"bundle": self.bundle_dir, "head": self.chain.kind, "threshold": self.threshold,
                "max_pixels": self.max_pixels, "config": self.chain.config.to_json()}


def _is_single(items: Any) -> bool:
    return isinstance(items, (str, Path, bytes, bytearray, memoryview, np.ndarray)) or \
        type(items).__module__.startswith("PIL.")
