"""Spectral-entropy patch selection (NS-Net / DGS-Net): a real FFT per patch, batched.

The image is cut, without resizing, into non-overlapping ``size`` x ``size`` patches. Each patch
is scored by the Shannon entropy (bits) of its normalised FFT power spectrum computed on the
luma ``0.299 R + 0.587 G + 0.114 B``. The ``n_low`` lowest- and ``n_high`` highest-entropy
patches are tiled into a square grid (7 x 7 x 32 px = 224 px by default).

Unlike the reference code, which reshuffles patches at every call, the grid order is a fixed
permutation seeded by the image id, so a frozen CLIP gives a cacheable feature. Images with
fewer patches than the grid needs repeat their own patches in entropy order (never black tiles
that would leak the image size).

``patches.views: K`` adds K - 1 further fixed orders of the same patches (``view_cells``): view 0
is the order above, view k > 0 a permutation of it seeded by (image id, k), so a frozen CLIP can
cache the reference's reshuffling as K features per image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class PatchSpec:
    size: int = 32
    n_low: int = 24
    n_high: int = 25

    @property
    def count(self) -> int:
        return self.n_low + self.n_high

    @property
    def grid(self) -> int:
        return round(self.count**0.5)

    @property
    def side(self) -> int:
        return self.grid * self.size

    @classmethod
    def of(cls, patches: Any) -> PatchSpec:
        """The spec of a ``patches`` params section (its other keys are not selection)."""
        return cls(size=patches.size, n_low=patches.n_low, n_high=patches.n_high)

    def as_dict(self) -> dict[str, int]:
        return {"size": self.size, "n_low": self.n_low, "n_high": self.n_high}


def patch_entropies(gray: torch.Tensor, size: int) -> torch.Tensor:
    """Spectral entropy of every patch: (..., H, W) -> (..., H // size, W // size).

    The luma is real, so its spectrum is Hermitian: a real FFT gives the columns 0..size/2 and
    every other column appears twice in the full spectrum. Weighting those columns by 2 gives
    the full-spectrum normalisation and entropy exactly (``patch_entropies_reference`` is the
    complex float64 form it is tested against), at about a tenth of the cost.
    """
    *lead, h, w = gray.shape
    gh, gw = h // size, w // size
    x = gray[..., : gh * size, : gw * size].to(torch.float32)
    x = x.reshape(*lead, gh, size, gw, size).transpose(-3, -2)  # (..., gh, gw, size, size)
    power = torch.fft.rfft2(x).abs().square()
    weights = _hermitian_weights(size)
    total = (power * weights).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    p = power / total
    return -(weights * p * torch.log2(p.clamp_min(1e-30))).sum(dim=(-2, -1))


def _hermitian_weights(size: int) -> torch.Tensor:
    """How often each rfft column occurs in the full spectrum (1 for DC and Nyquist, else 2)."""
    weights = torch.full((size // 2 + 1,), 2.0)
    weights[0] = 1.0
    if size % 2 == 0:
        weights[-1] = 1.0
    return weights


def patch_entropies_reference(gray: torch.Tensor, size: int) -> torch.Tensor:
    """The straightforward form (complex float64 FFT over the full spectrum), for tests."""
    *lead, h, w = gray.shape
    gh, gw = h // size, w // size
    x = gray[..., : gh * size, : gw * size]
    x = x.reshape(*lead, gh, size, gw, size).transpose(-3, -2)
    power = torch.fft.fft2(x.to(torch.float64)).abs().square()
    p = power / power.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    ent = -(p * torch.log2(p.clamp_min(1e-30))).sum(dim=(-2, -1))
    return ent.to(torch.float32)


def to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8/float -> (..., H, W) float32 luma, as one matrix product."""
    weights = torch.tensor(LUMA, dtype=torch.float32)
    return rgb.to(torch.float32) @ weights


def seed_of(image_id: str) -> int:
    """A 63-bit seed derived from a hex image id."""
    digits = "".join(c for c in image_id if c in "0123456789abcdef")[:15] or "0"
    return int(digits, 16)


def choose(entropy: torch.Tensor, spec: PatchSpec, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Pick the grid's patches from an entropy map (gh, gw).

    Returns (cells, entropies): ``cells[k] = (row, col)`` of the patch placed at grid position k
    (row-major) and its entropy.
    """
    gh, gw = entropy.shape
    flat = entropy.reshape(-1)
    order = torch.sort(flat, stable=True).indices  # ascending entropy, ties by position
    n = order.numel()
    if n >= spec.count:
        picked = torch.cat([order[: spec.n_low], order[n - spec.n_high:]])
    else:  # too few patches: repeat the image's own patches, in entropy order
        picked = order.repeat((spec.count + n - 1) // n)[: spec.count]
    gen = torch.Generator().manual_seed(seed_of(image_id))
    picked = picked[torch.randperm(spec.count, generator=gen)]
    cells = torch.stack([picked // gw, picked % gw], dim=1).numpy().astype(np.int32)
    return cells, flat[picked].numpy().astype(np.float32)


def view_seed(image_id: str, view: int) -> int:
    """A 63-bit seed of (image id, view index) for views k > 0."""
    import hashlib

    digest = hashlib.blake2b(f"{image_id}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def view_orders(image_id: str, views: int, count: int) -> np.ndarray:
    """(views, count) grid orders: row 0 the identity (today's order), row k > 0 a permutation
    seeded by (image id, k), redrawn while it repeats an earlier row (so views are distinct
    whenever ``count!`` allows it)."""
    orders = [np.arange(count)]
    for k in range(1, views):
        gen = torch.Generator().manual_seed(view_seed(image_id, k))
        seen = {o.tobytes() for o in orders}
        for _ in range(64):
            order = torch.randperm(count, generator=gen).numpy()
            if order.tobytes() not in seen:
                break
        else:  # only tiny grids get here: the first unused order (one exists if views <= count!)
            order = next(o for o in map(np.array, itertools.permutations(range(count)))
                         if o.tobytes() not in seen)
        orders.append(order)
    return np.stack(orders)


def view_cells(cells: np.ndarray, image_id: str, views: int) -> np.ndarray:
    """(count, 2) view-0 cells -> (views, count, 2): the same patches in each view's order."""
    return cells[view_orders(image_id, views, len(cells))]


def view_composites(rgb: np.ndarray, cells: np.ndarray, image_id: str, views: int,
                    spec: PatchSpec) -> np.ndarray:
    """(views, side, side, 3) composites of one decoded image, view 0 first."""
    return np.stack([composite(rgb, c, spec) for c in view_cells(cells, image_id, views)])


def composite(rgb: np.ndarray, cells: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """Tile the chosen patches of an (H, W, 3) uint8 image into a (side, side, 3) grid."""
    s, g = spec.size, spec.grid
    h, w = rgb.shape[0] // s, rgb.shape[1] // s
    tiles = rgb[: h * s, : w * s].reshape(h, s, w, s, 3).transpose(0, 2, 1, 3, 4)
    chosen = tiles[cells[:, 0], cells[:, 1]]  # (count, s, s, 3)
    return chosen.reshape(g, g, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(g * s, g * s, 3).copy()


@dataclass
class Selection:
    composite: np.ndarray | None  # (side, side, 3) uint8; None when only the cells were asked
    cells: np.ndarray  # (count, 2) int32 patch row/col in the (oriented) image
    entropy: np.ndarray  # (count,) float32


def select_cells(rgb: np.ndarray, image_id: str, spec: PatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """The grid's cells and their entropies for one decoded image (what the cache stores)."""
    if rgb.shape[0] < spec.size or rgb.shape[1] < spec.size:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} is smaller than one patch")
    return choose(patch_entropies(to_gray(torch.from_numpy(rgb)), spec.size), spec, image_id)


def select_patches(rgb: np.ndarray, image_id: str, spec: PatchSpec) -> Selection:
    """Full selection for one decoded image, composite included."""
    cells, entropies = select_cells(rgb, image_id, spec)
    return Selection(composite(rgb, cells, spec), cells, entropies)


def select_batch(images: list[np.ndarray], ids: list[str], spec: PatchSpec) -> list[Selection]:
    """Selection for many images; images of equal size share one batched FFT."""
    out: list[Selection | None] = [None] * len(images)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape[:2], []).append(i)
    for idx in by_shape.values():
        stack = torch.from_numpy(np.stack([images[i] for i in idx]))
        ents = patch_entropies(to_gray(stack), spec.size)
        for j, i in enumerate(idx):
            cells, entropies = choose(ents[j], spec, ids[i])
            out[i] = Selection(composite(images[i], cells, spec), cells, entropies)
    return out  # type: ignore[return-value]


# The code that defines each cached output (``nsnet.provenance.code_fingerprint``): the
# selection (cells and entropies) and the composites built from it in each patch order.
SELECTION_CODE = (select_cells, choose, patch_entropies, _hermitian_weights, to_gray, seed_of,
                  LUMA)
ORDER_CODE = (composite, view_orders, view_cells, view_seed)
