"""What the extraction computes, as one frozen type: the parts of the feature store.

``ExtractSettings.from_params`` reads the params that change a cached feature, once; every
part's settings (its directory in the store), the provenance written beside it and the shard
settings sent to workers are derived from it, never written by hand. Machine-dependent choices
(device, batch sizes, worker counts) are ``ExtractRuntime``: they change how fast features are
computed, not what they are, so they are not part of any key.

An image's features depend on what was done to the image first, its *treatment*: ``""`` for the
file as it is, ``protocol.train_reencode`` (e.g. ``jpeg95``) for training images, or a
degradation name (``jpeg30``, ``resize64``, ``blur3``) for degraded test copies. The treatment is
part of the settings of the pixel parts (selection, caption), and so, through their keys, of
every part computed from them.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.cache_store import Part
from pipeline.config import Params
from pipeline.extraction.patch_selection import LUMA, PatchSpec
from pipeline.provenance import code_fingerprint

SELECTION, CAPTION, IMAGE, TEXT, COMPOSITE = "selection", "caption", "image", "text", "composite"
PIXEL_KINDS = (SELECTION, CAPTION, IMAGE, COMPOSITE)  # computed from decoded pixels
TRAINING_SPLITS = ("train", "val")


def image_kind(view: int) -> str:
    """The work kind of patch order ``view``'s image embedding (``image:0``, ``image:1``...)."""
    return f"{IMAGE}:{view}"


@dataclass(frozen=True)
class PartSet:
    """The parts of one treatment: what an image under that treatment has in the store."""

    treatment: str
    selection: Part
    caption: Part
    images: tuple[Part, ...]  # one per patch-order view, view 0 first
    text: Part
    composite: Part | None  # only with patches.keep_composites

    def by_kind(self) -> dict[str, Part]:
        """Work kind -> part (``selection``, ``caption``, ``image:<k>``, ``text``, ...)."""
        out = {SELECTION: self.selection, CAPTION: self.caption, TEXT: self.text}
        out.update({image_kind(k): p for k, p in enumerate(self.images)})
        if self.composite is not None:
            out[COMPOSITE] = self.composite
        return out


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP embeds (``clip.arch``, ``clip.pretrained``)."""

    arch: str
    pretrained: str


@dataclass(frozen=True)
class CaptionSpec:
    """Which captioner and how long its captions are (``caption.model``,
    ``caption.max_new_tokens``)."""

    model: str
    max_new_tokens: int


@dataclass(frozen=True)
class ExtractSettings:
    """Every setting that changes a cached feature, spelled as in ``params.yaml``: the part
    keys, the provenance and the shard settings are derived from it."""

    patches: PatchSpec  # patches.size, n_low, n_high
    views: int  # patches.views
    keep_composites: bool  # patches.keep_composites
    caption: CaptionSpec  # caption.model, caption.max_new_tokens
    clip: ClipSpec  # clip.arch, clip.pretrained
    precision: str  # compute.precision
    train_reencode: str  # protocol.train_reencode
    degradations: tuple[str, ...]  # protocol.degradations

    @classmethod
    def from_params(cls, params: Params) -> ExtractSettings:
        return cls(
            patches=PatchSpec.of(params.patches), views=params.patches.views,
            keep_composites=params.patches.keep_composites,
            caption=CaptionSpec(params.caption.model, params.caption.max_new_tokens),
            clip=ClipSpec(params.clip.arch, params.clip.pretrained),
            precision=params.compute.precision,
            train_reencode=params.protocol.train_reencode,
            degradations=tuple(params.protocol.degradations),
        )

    def treatment(self, split: str) -> str:
        """The treatment of an image of ``split`` in the clean pass: training images are
        re-encoded as ``protocol.train_reencode`` says, test images kept as they are."""
        return self.train_reencode if split in TRAINING_SPLITS else ""

    @functools.lru_cache(maxsize=64)  # noqa: B019 - frozen, hashable, few treatments
    def parts(self, treatment: str = "") -> PartSet:
        """The store parts of images under ``treatment`` (their keys are derived here)."""
        from pipeline.backbones.blip import CAPTION_CODE
        from pipeline.backbones.clip import IMAGE_CODE, TEXT_CODE
        from pipeline.data import degradations
        from pipeline.data.images import PIXEL_CODE
        from pipeline.extraction.patch_selection import ORDER_CODE, SELECTION_CODE

        pixels = {"treatment": treatment}
        pixel_code = (*PIXEL_CODE, degradations) if treatment else PIXEL_CODE
        selection = Part(SELECTION, {
            **pixels, "patches": self.patches.as_dict(), "luma": list(LUMA),
            "entropy": "shannon-log2-fft-power", "order": "permutation-seeded-by-id",
            "fill": "repeat-own-patches", "code": code_fingerprint(*SELECTION_CODE, *pixel_code)})
        precision = {"compute": {"precision": self.precision}}
        caption = Part(CAPTION, {
            **pixels, "caption": asdict(self.caption), **precision, "decoding": "greedy",
            "code": code_fingerprint(*CAPTION_CODE, *pixel_code)})
        embed = {"clip": asdict(self.clip), **precision}
        images = tuple(Part(IMAGE, {**embed, "view": k, "selection_part": selection.key,
                                    "code": code_fingerprint(*IMAGE_CODE, *ORDER_CODE)})
                       for k in range(self.views))
        text = Part(TEXT, {**embed, "caption_part": caption.key,
                           "code": code_fingerprint(*TEXT_CODE)})
        composite = (Part(COMPOSITE, {"selection_part": selection.key,
                                      "code": code_fingerprint(*ORDER_CODE)})
                     if self.keep_composites else None)
        return PartSet(treatment, selection, caption, images, text, composite)

    def provenance(self) -> dict[str, Any]:
        """The settings as provenance, spelled as in params.yaml."""
        return {"clip": asdict(self.clip), "caption": asdict(self.caption),
                "compute": {"precision": self.precision},
                "patches": {**self.patches.as_dict(), "views": self.views},
                "protocol": {"train_reencode": self.train_reencode,
                             "degradations": list(self.degradations)}}


@dataclass(frozen=True)
class ExtractRuntime:
    """How fast, not what: the machine-dependent settings of one extraction run."""

    device: str  # compute.device as given (auto, cpu, cuda:1, ...)
    num_workers: int  # decoding worker processes
    caption_batch: int
    clip_batch: int
    max_pixels: int  # data.max_image_pixels (decompression-bomb guard)

    @classmethod
    def from_params(cls, params: Params) -> ExtractRuntime:
        """Resolve every ``auto`` for this machine (``pipeline.runtime``)."""
        from pipeline import runtime
        from pipeline.backbones.clip import resolve_device

        device = resolve_device(params.compute.device)
        return cls(device=params.compute.device,
                   num_workers=runtime.workers(params.compute.num_workers, device),
                   caption_batch=runtime.caption_batch(params.caption.batch_size, device),
                   clip_batch=runtime.clip_batch(params.clip.batch_size, device),
                   max_pixels=params.data.max_image_pixels)
