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

from nsnet.cache_store import Part
from nsnet.config import Params
from nsnet.extraction.patch_selection import LUMA, PatchSpec
from nsnet.provenance import code_fingerprint

SELECTION, CAPTION, IMAGE, TEXT, COMPOSITE = "selection", "caption", "image", "text", "composite"
CLIP_CROP, CLIP_LAYERS, COZZOLINO = "clip_crop", "clip_layers", "cozzolino"
# Work kinds computed from decoded pixels (the rest, ``text``, from stored captions).
PIXEL_KINDS = (SELECTION, CAPTION, IMAGE, COMPOSITE, CLIP_CROP, CLIP_LAYERS, COZZOLINO)
TRAINING_SPLITS = ("train", "val")
# The kinds the heads read (selections, captions and composites only make them).
READ_KINDS = (IMAGE, TEXT, CLIP_CROP, CLIP_LAYERS, COZZOLINO)
RECIPES = ("composite", CLIP_CROP, CLIP_LAYERS, COZZOLINO)  # = config.requested_recipes order


def image_kind(view: int) -> str:
    """The work kind of patch order ``view``'s image embedding (``image:0``, ``image:1``...)."""
    return f"{IMAGE}:{view}"


def crop_kind(recipe: str, crop: int) -> str:
    """The work kind of crop ``crop`` of a cropped recipe (``clip_crop:0``, ``clip_layers:1``;
    crop 0 is the test-time center crop, the others the training augmentation's)."""
    return f"{recipe}:{crop}"


def kind_base(kind: str) -> str:
    """``image:3`` -> ``image``; ``text`` -> ``text``."""
    return kind.split(":")[0]


def kind_view(kind: str) -> int:
    return int(kind.split(":")[1]) if ":" in kind else 0


@dataclass(frozen=True)
class PartSet:
    """The parts of one treatment: what an image under that treatment has in the store.

    The composite recipe (NS-Net's input: selection, caption, the composite's embedding in each
    patch order, the caption's embedding) and the baseline recipes (``clip_crop`` and
    ``clip_layers`` crops, ``cozzolino``); ``by_kind`` lists those the params request.
    """

    treatment: str
    selection: Part
    caption: Part
    images: tuple[Part, ...]  # one per patch-order view, view 0 first
    text: Part
    composite: Part | None  # only with patches.keep_composites
    clip_crop: tuple[Part, ...]  # crop 0 = the test-time crop, then UnivFD's training crops
    clip_layers: tuple[Part, ...]  # crop 0 = the test-time crop, then RINE's training crops
    cozzolino: Part
    recipes: tuple[str, ...]  # the requested recipes

    def by_kind(self) -> dict[str, Part]:
        """Work kind -> part, for the requested recipes (``selection``, ``caption``,
        ``image:<k>``, ``text``, ``clip_crop:<k>``, ...)."""
        out: dict[str, Part] = {}
        if "composite" in self.recipes:
            out = {SELECTION: self.selection, CAPTION: self.caption, TEXT: self.text}
            out.update({image_kind(k): p for k, p in enumerate(self.images)})
            if self.composite is not None:
                out[COMPOSITE] = self.composite
        if CLIP_CROP in self.recipes:
            out.update({crop_kind(CLIP_CROP, k): p for k, p in enumerate(self.clip_crop)})
        if CLIP_LAYERS in self.recipes:
            out.update({crop_kind(CLIP_LAYERS, k): p for k, p in enumerate(self.clip_layers)})
        if COZZOLINO in self.recipes:
            out[COZZOLINO] = self.cozzolino
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
class RecipeSpec:
    """The baseline recipes' settings (``recipes.*``)."""

    crops: int  # clip_crop: crop 0 (test-time) + recipes.crop_augmentations
    layer_crops: int  # clip_layers: crop 0 + recipes.layer_augmentations
    layers: tuple[int, ...] | str  # recipes.layers: block indices, or "all"
    cozzolino: ClipSpec  # recipes.cozzolino_arch, recipes.cozzolino_pretrained


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
    recipes: tuple[str, ...] = ("composite",)  # what the heads of train.head, compare.heads read
    recipe: RecipeSpec = RecipeSpec(9, 2, "all", ClipSpec("ViT-L-14", "commonpool_xl_s13b_b90k"))

    @classmethod
    def from_params(cls, params: Params) -> ExtractSettings:
        """What ``nsnet extract`` computes: the recipes of ``train.head`` and
        ``compare.heads``, every ``protocol.degradations`` entry, the composites when kept."""
        from nsnet.config import requested_recipes

        return cls.reading(params, *requested_recipes(params),
                           degradations=tuple(params.protocol.degradations),
                           keep_composites=params.patches.keep_composites)

    @classmethod
    def reading(cls, params: Params, *recipes: str, degradations: tuple[str, ...] = (),
                keep_composites: bool = False) -> ExtractSettings:
        """The settings of ``recipes``' features, clean and under ``degradations``: what a
        reader of them reads, and nothing else (no other head, degradation or composite), so
        a stage's result never depends on a setting of features it does not read."""
        r = params.recipes
        return cls(
            patches=PatchSpec.of(params.patches), views=params.patches.views,
            keep_composites=keep_composites,
            caption=CaptionSpec(params.caption.model, params.caption.max_new_tokens),
            clip=ClipSpec(params.clip.arch, params.clip.pretrained),
            precision=params.compute.precision,
            train_reencode=params.protocol.train_reencode,
            degradations=tuple(degradations),
            recipes=tuple(x for x in RECIPES if x in recipes),
            recipe=RecipeSpec(1 + r.crop_augmentations, 1 + r.layer_augmentations,
                              r.layers if isinstance(r.layers, str) else tuple(r.layers),
                              ClipSpec(r.cozzolino_arch, r.cozzolino_pretrained)),
        )

    def training_crops(self, kind: str) -> bool:
        """Whether a work kind exists for training images only (the augmented crops of the
        cropped recipes; crop 0, the test-time crop, exists for every image)."""
        return kind_base(kind) in (CLIP_CROP, CLIP_LAYERS) and kind_view(kind) > 0

    def treatment(self, split: str) -> str:
        """The treatment of an image of ``split`` in the clean pass: training images are
        re-encoded as ``protocol.train_reencode`` says, test images kept as they are."""
        return self.train_reencode if split in TRAINING_SPLITS else ""

    @functools.lru_cache(maxsize=64)  # noqa: B019 - frozen, hashable, few treatments
    def parts(self, treatment: str = "") -> PartSet:
        """The store parts of images under ``treatment`` (their keys are derived here)."""
        from nsnet.backbones.blip import CAPTION_CODE
        from nsnet.backbones.clip import IMAGE_CODE, TEXT_CODE
        from nsnet.data import degradations
        from nsnet.data.images import PIXEL_CODE
        from nsnet.extraction.patch_selection import ORDER_CODE, SELECTION_CODE

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
        return PartSet(treatment, selection, caption, images, text, composite,
                       *self._recipe_parts(treatment, pixel_code), recipes=self.recipes)

    def read_parts(self, treatment: str = "") -> dict[str, Part]:
        """The parts of ``treatment`` the heads read (``READ_KINDS``), by work kind."""
        return {k: p for k, p in self.parts(treatment).by_kind().items()
                if kind_base(k) in READ_KINDS}

    def _recipe_parts(self, treatment: str, pixel_code: tuple
                      ) -> tuple[tuple[Part, ...], tuple[Part, ...], Part]:
        from nsnet.backbones.clip import IMAGE_CODE
        from nsnet.backbones.recipes import CLIP_CROP_CODE, CLIP_LAYERS_CODE, COZZOLINO_CODE

        precision = {"compute": {"precision": self.precision}}
        base = {"treatment": treatment, "clip": asdict(self.clip), **precision}
        crop = tuple(Part(CLIP_CROP, {
            **base, "crop": k, "augment": "univfd" if k else "center_crop",
            "code": code_fingerprint(*CLIP_CROP_CODE, *IMAGE_CODE, *pixel_code)})
            for k in range(self.recipe.crops))
        layers = self.recipe.layers if isinstance(self.recipe.layers, str) \
            else list(self.recipe.layers)
        tokens = tuple(Part(CLIP_LAYERS, {
            **base, "crop": k, "augment": "rine" if k else "center_crop", "layers": layers,
            "code": code_fingerprint(*CLIP_LAYERS_CODE, *IMAGE_CODE, *pixel_code)})
            for k in range(self.recipe.layer_crops))
        cozzolino = Part(COZZOLINO, {
            "treatment": treatment, "backbone": asdict(self.recipe.cozzolino), **precision,
            "code": code_fingerprint(*COZZOLINO_CODE, *IMAGE_CODE, *pixel_code)})
        return crop, tokens, cozzolino

    def provenance(self) -> dict[str, Any]:
        """The settings as provenance, spelled as in params.yaml."""
        r = self.recipe
        return {"clip": asdict(self.clip), "caption": asdict(self.caption),
                "compute": {"precision": self.precision},
                "patches": {**self.patches.as_dict(), "views": self.views},
                "protocol": {"train_reencode": self.train_reencode,
                             "degradations": list(self.degradations)},
                "recipes": {"requested": list(self.recipes),
                            "crop_augmentations": r.crops - 1,
                            "layer_augmentations": r.layer_crops - 1,
                            "layers": r.layers if isinstance(r.layers, str) else list(r.layers),
                            "cozzolino_arch": r.cozzolino.arch,
                            "cozzolino_pretrained": r.cozzolino.pretrained}}


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
        """Resolve every ``auto`` for this machine (``nsnet.runtime``)."""
        from nsnet import runtime
        from nsnet.backbones.clip import resolve_device

        device = resolve_device(params.compute.device)
        return cls(device=params.compute.device,
                   num_workers=runtime.workers(params.compute.num_workers, device),
                   caption_batch=runtime.caption_batch(params.caption.batch_size, device),
                   clip_batch=runtime.clip_batch(params.clip.batch_size, device),
                   max_pixels=params.data.max_image_pixels)
