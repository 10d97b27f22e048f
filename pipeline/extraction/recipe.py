"""A feature recipe as one object: what the store computes per image for a family of heads, and
how every reader gets it back.

Each recipe lives in its own module under ``nsnet.extraction.recipes`` (the module's name is the
recipe's name) and registers one ``Recipe`` in ``nsnet.registry.RECIPES``; adding a recipe is
adding such a module (docs/development.md, "Recipes"). The extraction runner, the store's
readers, the bundles, predict, explain and serve look recipes up there and never branch on a
recipe's name. A recipe says:

* its settings: ``spec(params)`` (frozen), spelled under ``recipes`` in provenance by
  ``provenance``;
* its store parts: ``parts`` (work kind -> ``Part``: their keys), which kinds exist for
  training images only (``training_only``), which the heads read (``read_bases``,
  ``test_kinds``, ``train_kinds``, ``text_kind``) and which come from pixels (``pixel_bases``);
* its backbones: ``needs`` (role -> ``availability.Need``);
* in a decoding worker, from ONE decoded RGB image: ``derive`` (what ``task`` asks for);
* in the main process, on a batch of those: ``embed`` (then ``after_pass``), ``arrays``;
* on new images (predict, explain): ``infer`` (the same ``derive`` + ``embed`` for the test-time
  kinds), ``test_pixels``, ``width``; what a bundle records: ``bundle_facts``,
  ``inference_spec``, ``own_backbone``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nsnet.extraction.settings import crop_kind, kind_base, kind_view

if TYPE_CHECKING:
    import torch

    from nsnet.backbones.availability import Need
    from nsnet.cache_store import Part
    from nsnet.config import Params
    from nsnet.extraction.image_pass import ImageWork
    from nsnet.extraction.settings import ExtractSettings

MAIN = "clip"  # the role of the project's CLIP (clip.arch, clip.pretrained)
SHARED_TOWER = "center_tower"


@dataclass
class RecipeRun:
    """One recipe's share of a shard, or of a batch of new images: what ``task``, ``embed`` and
    ``after_pass`` read."""

    spec: Any  # the recipe's spec (``Recipe.spec``)
    kinds: tuple[str, ...]  # the work kinds to compute, in commit order
    models: Mapping[str, Any]  # role -> loaded backbone
    amp: torch.dtype | None = None
    batch_size: int = 64  # rows per forward pass
    device: Any = None  # the models' torch.device
    settings: ExtractSettings | None = None  # None for new images (a bundle's chain)
    # Forward passes of one batch shared between recipes (the runner empties it per batch) and
    # the blocks the shared pass over the center crops keeps (``center_tower``).
    shared: dict[str, Any] = field(default_factory=dict)
    tower_layers: tuple[int, ...] | str | None = None

    def views(self, base: str) -> tuple[int, ...]:
        """The views (patch orders, crops) of ``base`` among ``kinds``."""
        return tuple(kind_view(k) for k in self.kinds if kind_base(k) == base and ":" in k)


class Recipe:
    """The interface (see the module docstring); defaults fit a recipe with one part per image
    and treatment, named as the recipe, embedded by the main CLIP."""

    name: str = ""
    rank: int = 0  # order among the recipes (``settings.recipes``, work kinds, commits)
    patch_orders: bool = False  # rows are the patch composite per patch order (else crops)
    role: str = MAIN  # the backbone that embeds it
    text_kind: str | None = None  # the kind heads read as text features (None: no text)
    kind_bases: tuple[str, ...] = ()  # its work kinds' bases in commit order (default: name)
    pixel_bases: tuple[str, ...] = ()  # those computed from decoded pixels (default: all)
    read_bases: tuple[str, ...] = ()  # those heads read, listed in catalogs (default: all)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.name:  # an abstract family (CroppedRecipe): its subclasses name themselves
            return
        cls.kind_bases = cls.kind_bases or (cls.name,)
        cls.pixel_bases = cls.pixel_bases or cls.kind_bases
        cls.read_bases = cls.read_bases or cls.kind_bases

    # --- settings and parts -----------------------------------------------------------------
    def spec(self, params: Params) -> Any:
        """Its own params, frozen and hashable (None: it reads only the shared settings)."""
        return None

    def provenance(self, spec: Any) -> dict[str, Any]:
        """``spec`` spelled as under ``recipes`` in params.yaml (merged into provenance)."""
        return {}

    def parts(self, settings: ExtractSettings, treatment: str, pixel_code: tuple
              ) -> dict[str, Part]:
        """Work kind -> part of images under ``treatment`` (``pixel_code``: the decoding and
        treatment code its pixels come from, for the code fingerprint)."""
        raise NotImplementedError

    def training_only(self, kind: str) -> bool:
        """Whether the kind exists for training images only (augmented training crops)."""
        return False

    def needs(self, settings: ExtractSettings, kinds: tuple[str, ...]) -> dict[str, Need]:
        """Role -> model that computing ``kinds`` loads."""
        from nsnet.backbones.availability import Need

        return {MAIN: Need("clip", settings.clip.arch, settings.clip.pretrained,
                           ("clip.arch", "clip.pretrained"))}

    def model_role(self, kind: str) -> str | None:
        """The role whose provenance the kind's part records (None: no model)."""
        return self.role

    # --- extraction ---------------------------------------------------------------------------
    def task(self, run: RecipeRun) -> Any:
        """What a worker derives from each decoded image for ``run.kinds`` (picklable; None:
        nothing from pixels)."""
        raise NotImplementedError

    def derive(self, task: Any, rgb: np.ndarray, work: ImageWork, j: int
               ) -> dict[str, np.ndarray]:
        """The fixed-size arrays of one decoded (H, W, 3) uint8 image under its treatment ``j``
        (batch keys: its own, distinct from other recipes')."""
        raise NotImplementedError

    def center_tokens(self, run: RecipeRun) -> tuple[int, ...] | str | None:
        """The blocks this run reads from the shared center-crop pass (``center_tower``)."""
        return None

    def embed(self, run: RecipeRun, task: Any, batch: Mapping[str, torch.Tensor]
              ) -> dict[str, Sequence[Any]]:
        """Work kind -> one row per sample of a batch of ``derive``'s arrays."""
        raise NotImplementedError

    def after_pass(self, run: RecipeRun, works: Sequence[ImageWork],
                   out: dict[str, list[Any]]) -> None:
        """Kinds computed from other kinds after the image pass (the caption embeddings)."""

    def arrays(self, kind: str, rows: list[Any]) -> dict[str, np.ndarray]:
        """The datasets of a segment of ``rows`` of ``kind``."""
        return {"emb": np.stack(rows).astype(np.float16)}

    # --- readers ------------------------------------------------------------------------------
    def test_kinds(self, settings: ExtractSettings | None) -> tuple[str, ...]:
        """The kinds a head reads for every image, as views of one row (crop 0 of a cropped
        recipe)."""
        return (self.name,)

    def train_kinds(self, settings: ExtractSettings) -> tuple[str, ...]:
        """The kinds of the augmented training crops (none: ``()``)."""
        return ()

    # --- new images and bundles ----------------------------------------------------------------
    def bundle_facts(self, spec: Any) -> dict[str, Any]:
        """What a bundle's ``backbones.recipe`` records beside the name (``RecipeFacts``)."""
        return {}

    def inference_spec(self, facts: Any) -> Any:
        """The spec to score new images with, from a bundle's ``backbones.recipe``."""
        return None

    def own_backbone(self, spec: Any) -> tuple[str, str] | None:
        """(arch, pretrained) of its own backbone, when it is not the main CLIP."""
        return None

    def test_pixels(self, rgb: np.ndarray) -> np.ndarray:
        """The test-time input of one image (what explain occludes)."""
        raise NotImplementedError

    def width(self, backbone: Any, spec: Any) -> int:
        """Values per image of the head's input (flattened row)."""
        raise NotImplementedError

    def infer(self, backbone: Any, spec: Any, images: Sequence[np.ndarray],
              ids: Sequence[str], amp: torch.dtype | None = None) -> torch.Tensor:
        """(B, F) float32 features of decoded images whose content ids are ``ids``, computed
        as extraction stores their test-time kinds (``derive`` + ``embed``, float16 rows
        flattened)."""
        import torch

        from nsnet.extraction.image_pass import ImageWork, collate

        run = RecipeRun(spec, self.test_kinds(None), {self.role: backbone}, amp,
                        max(1, len(images)), getattr(backbone, "device", None))
        run.tower_layers = self.center_tokens(run)
        task = self.task(run)
        batch = collate([[self.derive(task, rgb, ImageWork(i, b"", ("",), (None,), (None,)),
                                      0)] for rgb, i in zip(images, ids, strict=True)])
        rows = self.embed(run, task, batch)[run.kinds[0]]
        return torch.from_numpy(np.asarray(rows, np.float32).reshape(len(images), -1))


def in_chunks(run: RecipeRun, pixels: np.ndarray, fn: Callable[[np.ndarray], Any]
              ) -> list[np.ndarray]:
    """``fn`` on ``run.batch_size`` rows of ``pixels`` at a time; each of its outputs (one
    tensor, or a tuple) joined on the CPU, as a list of arrays."""
    bs = run.batch_size
    got = [fn(pixels[i:i + bs]) for i in range(0, len(pixels), bs)]
    if isinstance(got[0], tuple):
        return [np.concatenate([g[j].cpu().numpy() for g in got]) for j in range(len(got[0]))]
    return [np.concatenate([g.cpu().numpy() for g in got])]


def center_tower(run: RecipeRun, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The main CLIP on one batch's test-time center crops, once for every recipe reading it
    (crop 0 of ``clip_crop``: the embedding; of ``clip_layers``: block tokens): the embeddings
    and, when ``run.tower_layers`` names blocks, their class tokens (``image_tower``)."""
    from nsnet.backbones import recipes

    if SHARED_TOWER not in run.shared:
        clip, amp, layers = run.models[MAIN], run.amp, run.tower_layers
        if layers is None:
            (emb,) = in_chunks(run, pixels, lambda p: recipes.clip_crop_embeddings(clip, p, amp))
            run.shared[SHARED_TOWER] = (emb, None)
        else:
            chosen = None if isinstance(layers, str) else list(layers)
            emb, toks = in_chunks(run, pixels,
                                  lambda p: recipes.image_tower(clip, p, chosen, amp))
            run.shared[SHARED_TOWER] = (emb, toks)
    return run.shared[SHARED_TOWER]


class CroppedRecipe(Recipe):
    """A recipe over 224 px crops of each image, one part per crop: crop 0 is the test-time
    center crop (every image; one forward pass shared with the other cropped recipes,
    ``center_tower``), crops 1..K-1 the paper's training augmentation (training images only),
    seeded by (image id, crop). A subclass names its augmentation (``augment``, an ``Augment``
    of ``nsnet.backbones.recipes``), which output of the shared pass is its crop 0
    (``tower_output``) and how it embeds the other crops (``embed_crops``)."""

    augment: str = ""  # e.g. "UNIVFD_TRAIN"
    tower_output: int = 0  # center_tower's (embedding, class tokens) index

    def training_only(self, kind: str) -> bool:
        return kind_view(kind) > 0

    def task(self, run: RecipeRun) -> tuple[int, ...] | None:
        return run.views(self.name) or None  # the crop indices

    def derive(self, task: tuple[int, ...], rgb: np.ndarray, work: ImageWork, j: int
               ) -> dict[str, np.ndarray]:
        from nsnet.backbones import recipes

        spec = getattr(recipes, self.augment)
        crops = recipes.crop_set(rgb, work.image_id, max(task) + 1, spec)
        return {self.name: crops[list(task)]}

    def embed_crops(self, run: RecipeRun, pixels: np.ndarray) -> np.ndarray:
        """The rows of augmented crops (B, S, S, 3) uint8."""
        raise NotImplementedError

    def embed(self, run: RecipeRun, task: tuple[int, ...], batch: Mapping[str, torch.Tensor]
              ) -> dict[str, Sequence[Any]]:
        out = {}
        for i, view in enumerate(task):
            pixels = batch[self.name][:, i].numpy()
            rows = self.embed_crops(run, pixels) if view else \
                center_tower(run, pixels)[self.tower_output]  # the test-time crop
            out[crop_kind(self.name, view)] = rows.astype(np.float16)
        return out

    def test_kinds(self, settings: ExtractSettings | None) -> tuple[str, ...]:
        return (crop_kind(self.name, 0),)

    def train_kinds(self, settings: ExtractSettings) -> tuple[str, ...]:
        return tuple(crop_kind(self.name, k) for k in range(1, settings.spec(self.name).crops))

    def test_pixels(self, rgb: np.ndarray) -> np.ndarray:
        from nsnet.backbones import recipes

        return recipes.center_crop(rgb)
