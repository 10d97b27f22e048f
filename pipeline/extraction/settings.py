"""What the extraction computes, as one frozen type: the parts of the feature store.

``ExtractSettings.from_params`` reads the params that change a cached feature, once; every
part's settings (its directory in the store), the provenance written beside it and the shard
settings sent to workers are derived from it, never written by hand. What each feature recipe
computes, and from which params, is the recipe's own (``nsnet.extraction.recipe``, one module
per recipe under ``nsnet.extraction.recipes``). Machine-dependent choices (device, batch sizes,
worker counts) are ``ExtractRuntime``: they change how fast features are computed, not what
they are, so they are not part of any key.

An image's features depend on what was done to the image first, its *treatment*: ``""`` for the
file as it is, ``protocol.train_reencode`` (e.g. ``jpeg95``) for training images, or a
degradation name (``jpeg30``, ``resize64``, ``blur3``) for degraded test copies. The treatment is
part of the settings of the pixel parts (selection, caption, the recipes' crops), and so,
through their keys, of every part computed from them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from nsnet.cache_store import Part
from nsnet.config import Params
from nsnet.extraction.patch_selection import PatchSpec
from nsnet.registry import RECIPES

# The work kinds of the composite recipe (NS-Net's input), read by the planner and the store's
# tools too; every other recipe's kinds are ``<recipe>`` or ``<recipe>:<crop>``.
SELECTION, CAPTION, IMAGE, TEXT, COMPOSITE = "selection", "caption", "image", "text", "composite"
TRAINING_SPLITS = ("train", "val")


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


@functools.cache
def recipe_names() -> tuple[str, ...]:
    """Every recipe, by rank: ``composite``, ``clip_crop``, ``clip_layers``, ``cozzolino``,
    ``rigid`` (the order of ``settings.recipes``, of the work kinds and of their commits)."""
    return tuple(sorted(RECIPES.names(), key=lambda n: (RECIPES.get(n).rank, n)))


@functools.cache
def _owners() -> dict[str, str]:
    return {base: name for name in recipe_names() for base in RECIPES.get(name).kind_bases}


def recipe_of(kind: str) -> Any:
    """The recipe (``nsnet.extraction.recipe.Recipe``) whose part a work kind is (``image:2``
    -> composite, ``clip_crop:1`` -> clip_crop)."""
    return RECIPES.get(_owners()[kind_base(kind)])


@functools.cache
def kind_order() -> tuple[str, ...]:
    """Every work kind's base in commit order: the recipes by rank, each its own order
    (selections and captions first: what later kinds of an interrupted shard build on)."""
    return tuple(b for name in recipe_names() for b in RECIPES.get(name).kind_bases)


def kind_rank(kind: str) -> tuple[int, int]:
    return kind_order().index(kind_base(kind)), kind_view(kind)


def pixel_kind(kind: str) -> bool:
    """Whether a work kind is computed from decoded pixels (``text`` is not: stored captions)."""
    return kind_base(kind) in recipe_of(kind).pixel_bases


def recipes_of_heads(heads: tuple[str, ...]) -> tuple[str, ...]:
    """The recipes the heads read (each head's method says which), each once."""
    from nsnet.registry import METHODS

    return tuple(dict.fromkeys(METHODS.get(METHODS.current(h)).recipe for h in heads))


@dataclass(frozen=True)
class PartSet:
    """The parts of one treatment: what an image under that treatment has in the store, for
    the requested recipes, by work kind (``selection``, ``caption``, ``image:<k>``, ``text``,
    ``composite``; ``clip_crop:<k>``, ``clip_layers:<k>``, ``cozzolino``, ``rigid``)."""

    treatment: str
    kinds: dict[str, Part]

    def by_kind(self) -> dict[str, Part]:
        """Work kind -> part, recipe by recipe."""
        return dict(self.kinds)

    def __getitem__(self, kind: str) -> Part:
        return self.kinds[kind]


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
    keys, the provenance and the shard settings are derived from it. ``specs`` holds each
    recipe's own settings (``Recipe.spec``), every recipe's, requested or not."""

    patches: PatchSpec  # patches.size, n_low, n_high
    views: int  # patches.views
    keep_composites: bool  # patches.keep_composites
    caption: CaptionSpec  # caption.model, caption.max_new_tokens
    clip: ClipSpec  # clip.arch, clip.pretrained
    precision: str  # compute.precision
    train_reencode: str  # protocol.train_reencode
    degradations: tuple[str, ...]  # protocol.degradations
    recipes: tuple[str, ...] = ("composite",)  # what the heads of train.head, compare.heads read
    specs: tuple[tuple[str, Any], ...] = ()  # (recipe, its spec), by rank

    @classmethod
    def from_params(cls, params: Params) -> ExtractSettings:
        """What ``nsnet extract`` computes: the recipes of ``train.head`` and
        ``compare.heads``, every ``protocol.degradations`` entry, the composites when kept."""
        return cls.reading(params, *recipes_of_heads((params.train.head, *params.compare.heads)),
                           degradations=tuple(params.protocol.degradations),
                           keep_composites=params.patches.keep_composites)

    @classmethod
    def reading(cls, params: Params, *recipes: str, degradations: tuple[str, ...] = (),
                keep_composites: bool = False) -> ExtractSettings:
        """The settings of ``recipes``' features, clean and under ``degradations``: what a
        reader of them reads, and nothing else (no other head, degradation or composite), so
        a stage's result never depends on a setting of features it does not read."""
        return cls(
            patches=PatchSpec.of(params.patches), views=params.patches.views,
            keep_composites=keep_composites,
            caption=CaptionSpec(params.caption.model, params.caption.max_new_tokens),
            clip=ClipSpec(params.clip.arch, params.clip.pretrained),
            precision=params.compute.precision,
            train_reencode=params.protocol.train_reencode,
            degradations=tuple(degradations),
            recipes=tuple(x for x in recipe_names() if x in recipes),
            specs=tuple((x, RECIPES.get(x).spec(params)) for x in recipe_names()),
        )

    def spec(self, recipe: str) -> Any:
        """The spec of ``recipe`` (its params, ``Recipe.spec``)."""
        return dict(self.specs)[recipe]

    def training_crops(self, kind: str) -> bool:
        """Whether a work kind exists for training images only (the augmented crops of the
        cropped recipes; crop 0, the test-time crop, exists for every image)."""
        return recipe_of(kind).training_only(kind)

    def treatment(self, split: str) -> str:
        """The treatment of an image of ``split`` in the clean pass: training images are
        re-encoded as ``protocol.train_reencode`` says, test images kept as they are."""
        return self.train_reencode if split in TRAINING_SPLITS else ""

    def kinds_by_recipe(self, kinds: Iterable[str]) -> list[tuple[Any, tuple[str, ...]]]:
        """``kinds`` grouped by recipe (a ``Recipe``), both in commit order (``kind_rank``)."""
        ordered = sorted(kinds, key=kind_rank)
        return [(RECIPES.get(r), mine) for r in recipe_names()
                if (mine := tuple(k for k in ordered if recipe_of(k).name == r))]

    @functools.lru_cache(maxsize=64)  # noqa: B019 - frozen, hashable, few treatments
    def parts(self, treatment: str = "") -> PartSet:
        """The store parts of images under ``treatment`` (their keys are derived here)."""
        from nsnet.data import degradations
        from nsnet.data.images import PIXEL_CODE

        pixel_code = (*PIXEL_CODE, degradations) if treatment else PIXEL_CODE
        kinds: dict[str, Part] = {}
        for name in self.recipes:
            kinds.update(RECIPES.get(name).parts(self, treatment, pixel_code))
        return PartSet(treatment, kinds)

    def read_parts(self, treatment: str = "") -> dict[str, Part]:
        """The parts of ``treatment`` the heads read (each recipe's ``read_bases``), by kind."""
        return {k: p for k, p in self.parts(treatment).by_kind().items()
                if kind_base(k) in recipe_of(k).read_bases}

    def provenance(self) -> dict[str, Any]:
        """The settings as provenance, spelled as in params.yaml."""
        recipes: dict[str, Any] = {"requested": list(self.recipes)}
        for name, spec in self.specs:
            recipes.update(RECIPES.get(name).provenance(spec))
        return {"clip": asdict(self.clip), "caption": asdict(self.caption),
                "compute": {"precision": self.precision},
                "patches": {**self.patches.as_dict(), "views": self.views},
                "protocol": {"train_reencode": self.train_reencode,
                             "degradations": list(self.degradations)},
                "recipes": recipes}


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
