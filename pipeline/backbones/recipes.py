"""Feature recipes of the baseline detectors, each from ONE decoded RGB uint8 image.

Every detector whose trainable part sits on a frozen backbone reads a fixed input per image, so
the feature store can compute it once. Each recipe does what the official code does to the
image before its frozen backbone (file and line citations in docs/baselines.md):

* ``clip_crop`` (UniversalFakeDetect, Ojha et al. 2023): pixels ``crop_set(rgb, id, K)``
  (crop 0 = ``validate.py``'s test transform, a 224 center crop with no resize; crops 1..K-1 =
  ``data/datasets.py``'s training augmentation, seeded by (image id, crop)), embedded by
  ``clip_crop_embeddings`` (CLIP's final projected image embedding, 768-d for ViT-L/14).
* ``clip_layers`` (RINE, Koutlis & Papadopoulos 2024): ``clip_layers(clip, crops, layers)``, the
  class token of the output of ``ln_2`` of every chosen transformer block of the image tower, as
  ``src/models.py`` hooks it (``ln_2(x + attn(ln_1(x)))``, not the block output). Its pixels are
  ``crop_set(..., spec=RINE_TRAIN)`` (the same center crop at test time).
* ``cozzolino`` (Cozzolino et al. 2024): ``cozzolino_features(load_cozzolino(), pixels)`` with
  ``pixels = cozzolino_pixels(rgb)``, the pre-projection feature of OpenCLIP ViT-L/14
  CommonPool-XL (after ``ln_post``), L2-normalised, on a bicubic shorter-side resize to 224 and a
  224 center crop (``networks/openclipnet.py``, ``main.py``, ``weights/*/config.yaml``).
* ``rigid`` (RIGID, He et al. 2024): ``rigid_embeddings(clip, pixels, rigid_noise(id))`` on
  ``clip_preprocess(rgb)`` (CLIP's own bicubic shorter-side resize to 224, 224 center crop), the
  projected embedding of each image and of it with seeded Gaussian noise added.

``image_tower`` gives the embedding and the layers of the same crops in one forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from nsnet.backbones.clip import ClipBackbone, load_clip
from nsnet.backbones.precision import autocast

__all__ = [
    "COZZOLINO_ARCH", "COZZOLINO_PRETRAINED", "CROP", "RINE_TRAIN", "UNIVFD_TRAIN", "Augment",
    "AugmentDraw", "all_layers", "apply_augment", "augment_draws", "augment_seed", "center_crop",
    "clip_crop_embeddings", "clip_layers", "cozzolino_features", "cozzolino_pixels", "crop_set",
    "draw_augment", "image_tower", "load_cozzolino", "resize_shorter", "clip_preprocess",
    "rigid_noise", "rigid_embeddings",
]

CROP = 224  # every recipe's input side (ViT-L/14)
# Cozzolino et al.'s backbone: networks/openclipnet.py 'clipL14commonpool' =
# ('ViT-L-14', hf 'laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K'), the open_clip tag below.
COZZOLINO_ARCH = "ViT-L-14"
COZZOLINO_PRETRAINED = "commonpool_xl_s13b_b90k"
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Augment:
    """One paper's training-time augmentation, applied in its order: shorter-side resize,
    Gaussian blur, JPEG re-encode (both on the whole image), random crop, horizontal flip."""

    name: str
    resize_short: int | None  # shorter side after the resize (None: no resize)
    blur_prob: float
    blur_sigma: tuple[float, float]  # sigma ~ U(lo, hi)
    jpeg_prob: float
    jpeg_methods: tuple[str, ...]  # drawn uniformly; both are encoded with PIL's libjpeg here
    jpeg_qualities: tuple[int, ...]  # drawn uniformly
    crop: int = CROP
    flip_prob: float = 0.5
    resample: str = "bilinear"


# UniversalFakeDetect: data/datasets.py (custom_resize to loadSize=256 bilinear, data_augment,
# RandomCrop(224), RandomHorizontalFlip) with options/base_options.py defaults blur_prob 0.5,
# blur_sig 0,3, jpg_prob 0.5, jpg_method cv2,pil, jpg_qual 30,100 (= every quality 30..100).
UNIVFD_TRAIN = Augment("univfd", 256, 0.5, (0.0, 3.0), 0.5, ("cv2", "pil"),
                       tuple(range(30, 101)))
# RINE: src/utils.py get_transforms (no resize; data_augment draws quality from [30, 100], i.e.
# 30 or 100 only; RandomCrop(224); RandomHorizontalFlip(p=0.5)).
RINE_TRAIN = Augment("rine", None, 0.5, (0.0, 3.0), 0.5, ("cv2", "pil"), (30, 100))


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices of one training crop (None: that step was skipped)."""

    blur_sigma: float | None
    jpeg: tuple[str, int] | None  # (method, quality)
    top: int
    left: int
    flip: bool


def augment_seed(image_id: str, recipe: str, crop: int) -> int:
    """A 63-bit seed of (image id, recipe, crop index): crops are fixed functions of the image."""
    digest = hashlib.blake2b(f"{image_id}:{recipe}:{crop}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _check_rgb(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3 and rgb.shape[0] > 0 and rgb.shape[1] > 0):
        raise ValueError(f"expected one decoded (H, W, 3) uint8 RGB image, got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")


def _pad_to(rgb: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an image smaller than ``size`` on a side, centred as torchvision's CenterCrop."""
    h, w = rgb.shape[:2]
    if h >= size and w >= size:
        return rgb
    dh, dw = max(size - h, 0), max(size - w, 0)
    return np.pad(rgb, ((dh // 2, (dh + 1) // 2), (dw // 2, (dw + 1) // 2), (0, 0)))


def center_crop(rgb: np.ndarray, size: int = CROP) -> np.ndarray:
    """(H, W, 3) -> (size, size, 3): torchvision ``CenterCrop(size)`` on a PIL image (offsets
    ``round((H - size) / 2)``; a side shorter than ``size`` is zero-padded first)."""
    _check_rgb(rgb)
    rgb = _pad_to(rgb, size)
    h, w = rgb.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def resize_shorter(rgb: np.ndarray, side: int, resample: str = "bilinear") -> np.ndarray:
    """torchvision ``resize(img, side)`` on a PIL image: the shorter side to ``side``, the longer
    to ``int(side * long / short)``; unchanged when it already has that size."""
    h, w = rgb.shape[:2]
    if w <= h:
        new_w, new_h = side, int(side * h / w)
    else:
        new_w, new_h = int(side * w / h), side
    if (new_h, new_w) == (h, w):
        return rgb
    out = Image.fromarray(rgb).resize((new_w, new_h), _RESAMPLE[resample])
    return np.asarray(out, dtype=np.uint8).copy()


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def draw_augment(spec: Augment, height: int, width: int, seed: int) -> AugmentDraw:
    """The seeded choices of one training crop of an image that is (height, width) after the
    resize (and padding) step; the order of the draws follows the official code."""
    rng = np.random.default_rng(seed)
    sigma = float(rng.uniform(*spec.blur_sigma)) if rng.random() < spec.blur_prob else None
    jpeg = None
    if rng.random() < spec.jpeg_prob:
        method = spec.jpeg_methods[int(rng.integers(len(spec.jpeg_methods)))]
        jpeg = (method, int(spec.jpeg_qualities[int(rng.integers(len(spec.jpeg_qualities)))]))
    top = int(rng.integers(0, height - spec.crop + 1))
    left = int(rng.integers(0, width - spec.crop + 1))
    return AugmentDraw(sigma, jpeg, top, left, bool(rng.random() < spec.flip_prob))


def _prepare(rgb: np.ndarray, spec: Augment) -> np.ndarray:
    """The deterministic part before the draws: resize (if any), padding of small images."""
    if spec.resize_short:
        rgb = resize_shorter(rgb, spec.resize_short, spec.resample)
    return _pad_to(rgb, spec.crop)


def apply_augment(rgb: np.ndarray, spec: Augment, draw: AugmentDraw) -> np.ndarray:
    """One training crop: ``spec``'s steps with the choices ``draw`` -> (crop, crop, 3) uint8."""
    _check_rgb(rgb)
    img = _prepare(rgb, spec).copy()
    if draw.blur_sigma is not None:  # per channel, in place on uint8, as the official code
        for c in range(3):
            gaussian_filter(img[:, :, c], output=img[:, :, c], sigma=draw.blur_sigma)
    if draw.jpeg is not None:
        img = _jpeg(img, draw.jpeg[1])
    out = img[draw.top:draw.top + spec.crop, draw.left:draw.left + spec.crop]
    if draw.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def augment_draws(rgb: np.ndarray, image_id: str, count: int, spec: Augment
                  ) -> list[AugmentDraw]:
    """The draws of crops 1..count-1 of one image (crop 0 is the center crop, no draw)."""
    h, w = _prepare(rgb, spec).shape[:2]
    return [draw_augment(spec, h, w, augment_seed(image_id, spec.name, k))
            for k in range(1, count)]


def crop_set(rgb: np.ndarray, image_id: str, count: int = 1,
               spec: Augment = UNIVFD_TRAIN) -> np.ndarray:
    """(count, 224, 224, 3) uint8 input pixels of one image, ready for CLIP.

    View 0 is the test-time transform of UniversalFakeDetect and RINE (``center_crop``, no
    resize); crop k > 0 applies ``spec`` (``UNIVFD_TRAIN`` or ``RINE_TRAIN``) with choices seeded
    by (image id, ``spec.name``, k), so every crop is a fixed function of the image. Cached as
    pixels: 150,528 bytes per crop; as a ViT-L/14 embedding see ``clip_crop_embeddings``.
    """
    _check_rgb(rgb)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out = [center_crop(rgb, spec.crop)]
    out += [apply_augment(rgb, spec, d) for d in augment_draws(rgb, image_id, count, spec)]
    return np.stack(out)


def cozzolino_pixels(rgb: np.ndarray) -> np.ndarray:
    """(224, 224, 3) uint8: Cozzolino et al.'s 'Clip224' input (``main.py``): torchvision
    ``Resize(224, BICUBIC)`` (shorter side) then ``CenterCrop((224, 224))``. 150,528 bytes as
    pixels; as a feature see ``cozzolino_features``."""
    _check_rgb(rgb)
    return center_crop(resize_shorter(rgb, CROP, "bicubic"), CROP)


def clip_preprocess(rgb: np.ndarray, size: int = CROP) -> np.ndarray:
    """(size, size, 3) uint8: CLIP's own preprocessing before normalisation (open_clip's
    ``Resize(size, BICUBIC)`` of the shorter side, then ``CenterCrop(size)``)."""
    _check_rgb(rgb)
    return center_crop(resize_shorter(rgb, size, "bicubic"), size)


def rigid_noise(image_id: str, size: int = CROP) -> np.ndarray:
    """(3, size, size) float32 standard normal noise, a fixed function of the image's content id
    (seeded as ``augment_seed(image_id, "rigid", 0)``): the same on every run and device."""
    rng = np.random.default_rng(augment_seed(image_id, "rigid", 0))
    return rng.standard_normal((3, size, size), dtype=np.float32)


# ------------------------------------------------------------------------------ the image tower
def _normalised(clip: ClipBackbone, pixels: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float, the model's own mean/std, no resampling."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (B, S, S, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    if pixels.shape[1:3] != (clip.image_size, clip.image_size):
        raise ValueError(f"pixels are {pixels.shape[1]}x{pixels.shape[2]}, the backbone reads "
                         f"{clip.image_size}x{clip.image_size}: crop them first (crop_set)")
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(clip.device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(clip.mean, device=clip.device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=clip.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _blocks(clip: ClipBackbone) -> torch.nn.ModuleList:
    visual = clip.model.visual
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not all(hasattr(b, "ln_2") for b in blocks):
        raise ValueError("this backbone's image tower is not a ViT with ln_2 in every block; "
                         "clip_layers needs an open_clip VisionTransformer")
    return blocks


def all_layers(clip: ClipBackbone) -> tuple[int, ...]:
    """Every block index of the image tower (24 for ViT-L/14): RINE reads all of them."""
    return tuple(range(len(_blocks(clip))))


def _check_layers(clip: ClipBackbone, layers: Sequence[int] | None) -> tuple[int, ...]:
    n = len(_blocks(clip))
    chosen = tuple(range(n)) if layers is None else tuple(int(i) for i in layers)
    if not chosen or any(i < 0 or i >= n for i in chosen) or list(chosen) != sorted(set(chosen)):
        raise ValueError(f"layers must be increasing block indices in 0..{n - 1}, got {layers}")
    return chosen


@contextlib.contextmanager
def _cls_of_ln2(clip: ClipBackbone, layers: tuple[int, ...]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks on the chosen blocks' ``ln_2`` keeping only the class token (RINE's
    ``Hook`` keeps the whole output and reads token 0 of it)."""
    blocks = _blocks(clip)
    batch_first = bool(getattr(clip.model.visual.transformer, "batch_first", False))
    seen: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(_module, _inputs, out):
            seen[i] = (out[:, 0] if batch_first else out[0]).float()
        return hook

    handles = [blocks[i].ln_2.register_forward_hook(keep(i)) for i in layers]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def image_tower(clip: ClipBackbone, pixels: np.ndarray, layers: Sequence[int] | None = None,
                amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of (B, 224, 224, 3) uint8 crops -> (embedding (B, d), layers (B, L, D)).

    The embedding is CLIP's final projected image embedding (``encode_image``, not normalised;
    UniversalFakeDetect's input). ``layers`` holds, for each chosen block (0-based, increasing;
    None = all), the class token of that block's ``ln_2`` output, as RINE's ``src/models.py``
    reads it. float32 on the backbone's device. ViT-L/14: 768 + L x 1024 values per crop, i.e.
    1,536 + 2,048 L bytes in fp16 (50,688 with all 24 blocks).
    """
    chosen = _check_layers(clip, layers)
    x = _normalised(clip, pixels)
    with _cls_of_ln2(clip, chosen) as seen, autocast(clip.device, amp_dtype):
        embedding = clip.model.encode_image(x).float()
    return embedding, torch.stack([seen[i] for i in chosen], dim=1)


@torch.inference_mode()
def clip_crop_embeddings(clip: ClipBackbone, pixels: np.ndarray,
                         amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 224, 224, 3) uint8 crops (``crop_set``) -> (B, d) float32 final projected CLIP
    image embeddings, not normalised (UniversalFakeDetect's ``fc`` reads them raw).

    ViT-L/14 (d = 768): 1,536 bytes per crop in fp16, 3,072 in fp32.
    """
    x = _normalised(clip, pixels)
    with autocast(clip.device, amp_dtype):
        return clip.model.encode_image(x).float()


def clip_layers(clip: ClipBackbone, pixels: np.ndarray, layers: Sequence[int] | None = None,
                amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 224, 224, 3) uint8 crops -> (B, L, D) float32: per chosen block (0-based, increasing;
    None = all), the class token of ``ln_2(x + attn(ln_1(x)))``, RINE's hooked tensor.

    ViT-L/14 with all 24 blocks (D = 1024): 24,576 values, 49,152 bytes per crop in fp16
    (98,304 in fp32); each block kept costs 2,048 bytes in fp16.
    """
    return image_tower(clip, pixels, layers, amp_dtype)[1]


@torch.inference_mode()
def rigid_embeddings(clip: ClipBackbone, pixels: np.ndarray, noise: np.ndarray, scale: float,
                     amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, S, S, 3) uint8 images and (B, 3, S, S) standard normal noise -> (B, 2, d) float32:
    CLIP's projected image embedding (not normalised) of each image (row 0) and of it with
    ``scale * noise`` added in the model's normalised input space (row 1), in one forward pass.

    ViT-L/14 (d = 768): 3,072 bytes per image in fp16.
    """
    x = _normalised(clip, pixels)
    n = torch.from_numpy(np.ascontiguousarray(noise, dtype=np.float32)).to(x.device)
    if n.shape != x.shape:
        raise ValueError(f"noise of shape {tuple(n.shape)} for inputs of {tuple(x.shape)}")
    with autocast(clip.device, amp_dtype):
        emb = clip.model.encode_image(torch.cat([x, x + scale * n])).float()
    return torch.stack([emb[:len(x)], emb[len(x):]], dim=1)


# ----------------------------------------------------------------------------- second backbone
def load_cozzolino(device: str = "auto") -> ClipBackbone:
    """Cozzolino et al.'s backbone, OpenCLIP ViT-L/14 CommonPool-XL (``commonpool_xl_s13b_b90k``,
    hf ``laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K``), through ``load_clip``: weights from the
    Hugging Face cache; ``ModelUnavailable`` (with the download command) when absent."""
    return load_clip(COZZOLINO_ARCH, COZZOLINO_PRETRAINED, device)


@torch.inference_mode()
def cozzolino_features(clip: ClipBackbone, pixels: np.ndarray,
                       amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 224, 224, 3) uint8 (``cozzolino_pixels``) -> (B, D) float32 unit vectors: the image
    tower's class token after ``ln_post`` and before the projection, L2-normalised
    (``OpenClipLinear(next_to_last=True, normalize=True)``: ``visual.proj = None`` then
    ``encode_image(x, normalize=True)``).

    ViT-L/14 (D = 1024): 2,048 bytes per image in fp16, 4,096 in fp32.
    """
    visual = clip.model.visual
    if getattr(visual, "attn_pool", None) is not None or \
            getattr(visual, "pool_type", "tok") != "tok" or not hasattr(visual, "ln_post"):
        raise ValueError("cozzolino_features needs a ViT image tower that pools its class token")
    x = _normalised(clip, pixels)
    seen: list[torch.Tensor] = []
    handle = visual.ln_post.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with autocast(clip.device, amp_dtype):
            clip.model.encode_image(x)
    finally:
        handle.remove()
    out = seen[0].float()
    pooled = out[:, 0] if out.ndim == 3 else out  # ln_post on all tokens, or after pooling
    return torch.nn.functional.normalize(pooled, dim=-1)


# The code that defines each recipe's cached feature (``nsnet.provenance.code_fingerprint``).
_CROP_PIXELS = (center_crop, _pad_to, resize_shorter, _jpeg, draw_augment, _prepare, apply_augment,
                augment_draws, augment_seed, crop_set, CROP)
CLIP_CROP_CODE = (*_CROP_PIXELS, UNIVFD_TRAIN, _normalised, clip_crop_embeddings)
CLIP_LAYERS_CODE = (*_CROP_PIXELS, RINE_TRAIN, _normalised, _blocks, _check_layers, _cls_of_ln2,
                    image_tower, clip_layers)
COZZOLINO_CODE = (cozzolino_pixels, center_crop, _pad_to, resize_shorter, _normalised,
                  cozzolino_features, load_cozzolino)
RIGID_CODE = (clip_preprocess, center_crop, _pad_to, resize_shorter, _check_rgb, rigid_noise,
              augment_seed, _normalised, rigid_embeddings)
