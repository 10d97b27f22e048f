"""``composite``: NS-Net's input, the store's first recipe.

Per image and treatment: the patch selection (grid cells and entropies), the BLIP caption of the
whole image, the CLIP embedding of the patch composite in each of ``patches.views`` patch
orders (``image:<view>``), the caption's CLIP embedding (``text``) and, with
``patches.keep_composites``, the composite's pixels. Its settings are the shared ones of
``ExtractSettings`` (patches, views, caption, clip). New images are scored by predict's own
chain (selection, captions for the heads that read them, views).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nsnet.cache_store import Part
from nsnet.extraction.patch_selection import LUMA, PatchSpec
from nsnet.extraction.recipe import MAIN, Recipe, RecipeRun
from nsnet.extraction.settings import (
    CAPTION,
    COMPOSITE,
    IMAGE,
    SELECTION,
    TEXT,
    ExtractSettings,
    image_kind,
    kind_base,
)
from nsnet.provenance import code_fingerprint
from nsnet.registry import RECIPES

if TYPE_CHECKING:
    import torch

    from nsnet.backbones.availability import Need
    from nsnet.extraction.image_pass import ImageWork, PassPlan

BLIP = "blip"  # the captioner's role


@dataclass(frozen=True)
class CompositeTask:
    """What a worker derives for the composite recipe: the selection (``select``), the
    composites of patch orders ``views`` (and of view 0 to keep it), BLIP's resize."""

    spec: PatchSpec
    select: bool = True  # compute cells/entropies (False: they come with the ImageWork)
    views: tuple[int, ...] = (0,)  # patch orders whose composites CLIP embeds (or ())
    keep_view0: bool = False  # also hand back view 0's composite (patches.keep_composites)
    blip: Any = None  # a BlipResize when captions are computed

    @property
    def composites(self) -> tuple[int, ...]:
        """The patch orders whose composites are built (embedded, or kept)."""
        return tuple(sorted(set(self.views) | ({0} if self.keep_view0 else set())))


def pass_plan(spec: PatchSpec, max_pixels: int, **task: Any) -> PassPlan:
    """An image pass of the composite recipe alone (``CompositeTask`` fields as keywords)."""
    from nsnet.extraction.image_pass import PassPlan

    return PassPlan(max_pixels, ((COMPOSITE_RECIPE.name, CompositeTask(spec, **task)),))


class Composite(Recipe):
    name = "composite"
    rank = 0
    patch_orders = True
    text_kind = TEXT
    kind_bases = (SELECTION, CAPTION, COMPOSITE, IMAGE, TEXT)
    pixel_bases = (SELECTION, CAPTION, IMAGE, COMPOSITE)
    read_bases = (IMAGE, TEXT)

    def parts(self, settings: ExtractSettings, treatment: str, pixel_code: tuple
              ) -> dict[str, Part]:
        from nsnet.backbones.blip import CAPTION_CODE
        from nsnet.backbones.clip import IMAGE_CODE, TEXT_CODE
        from nsnet.extraction.patch_selection import ORDER_CODE, SELECTION_CODE

        pixels = {"treatment": treatment}
        selection = Part(SELECTION, {
            **pixels, "patches": settings.patches.as_dict(), "luma": list(LUMA),
            "entropy": "shannon-log2-fft-power", "order": "permutation-seeded-by-id",
            "fill": "repeat-own-patches", "code": code_fingerprint(*SELECTION_CODE, *pixel_code)})
        precision = {"compute": {"precision": settings.precision}}
        caption = Part(CAPTION, {
            **pixels, "caption": asdict(settings.caption), **precision, "decoding": "greedy",
            "code": code_fingerprint(*CAPTION_CODE, *pixel_code)})
        embed = {"clip": asdict(settings.clip), **precision}
        out = {SELECTION: selection, CAPTION: caption,
               TEXT: Part(TEXT, {**embed, "caption_part": caption.key,
                                 "code": code_fingerprint(*TEXT_CODE)})}
        out.update({image_kind(k): Part(IMAGE, {
            **embed, "view": k, "selection_part": selection.key,
            "code": code_fingerprint(*IMAGE_CODE, *ORDER_CODE)}) for k in range(settings.views)})
        if settings.keep_composites:
            out[COMPOSITE] = Part(COMPOSITE, {"selection_part": selection.key,
                                              "code": code_fingerprint(*ORDER_CODE)})
        return out

    def needs(self, settings: ExtractSettings, kinds: tuple[str, ...]) -> dict[str, Need]:
        """The CLIP for embeddings, BLIP only for captions."""
        bases = {kind_base(k) for k in kinds}
        needs = super().needs(settings, kinds) if bases & {IMAGE, TEXT} else {}
        if CAPTION in bases:
            from nsnet.backbones.availability import Need

            needs[BLIP] = Need("blip", settings.caption.model, keys=("caption.model",))
        return needs

    def model_role(self, kind: str) -> str | None:
        return {CAPTION: BLIP, IMAGE: MAIN, TEXT: MAIN}.get(kind_base(kind))

    def task(self, run: RecipeRun) -> CompositeTask | None:
        assert run.settings is not None
        blip = run.models.get(BLIP)
        task = CompositeTask(run.settings.patches, select=SELECTION in run.kinds,
                             views=run.views(IMAGE), keep_view0=COMPOSITE in run.kinds,
                             blip=blip.resizer if blip is not None else None)
        return task if task.select or task.composites or task.blip is not None else None

    def derive(self, task: CompositeTask, rgb: np.ndarray, work: ImageWork, j: int
               ) -> dict[str, np.ndarray]:
        from nsnet.extraction.patch_selection import composite, select_cells, view_cells

        item: dict[str, np.ndarray] = {}
        cells = work.cells[j]
        if task.select:
            cells, item["entropy"] = select_cells(rgb, work.image_id, task.spec)
            item["cells"] = cells
        wanted = task.composites
        if wanted:
            if cells is None:
                raise ValueError(f"{work.image_id}: no patch selection to build composites from")
            orders = view_cells(cells, work.image_id, max(wanted) + 1)
            item["composite"] = np.stack([composite(rgb, orders[k], task.spec) for k in wanted])
        if task.blip is not None:
            item["blip"] = task.blip.resize(rgb)
        return item

    def embed(self, run: RecipeRun, task: CompositeTask, batch: Mapping[str, torch.Tensor]
              ) -> dict[str, Sequence[Any]]:
        assert run.settings is not None
        out: dict[str, Sequence[Any]] = {}
        if task.select:
            out[SELECTION] = list(zip(batch["cells"].numpy(), batch["entropy"].numpy(),
                                      strict=True))
        blip = run.models.get(BLIP)
        if blip is not None:
            pixels = task.blip.normalise(batch["blip"], run.device)
            out[CAPTION] = blip.generate(pixels, run.settings.caption.max_new_tokens, run.amp)
        built = task.composites
        for view in task.views:
            comps = batch["composite"][:, built.index(view)].numpy()
            out[image_kind(view)] = encode_images(run, comps)
        if task.keep_view0:
            out[COMPOSITE] = batch["composite"][:, built.index(0)].numpy()
        return out

    def after_pass(self, run: RecipeRun, works: Sequence[ImageWork],
                   out: dict[str, list[Any]]) -> None:
        """The caption embeddings: of this shard's captions, or of those the store holds."""
        if TEXT in run.kinds:
            captions = (out[CAPTION] if CAPTION in run.kinds else
                        [c for w in works for c in w.captions])
            out[TEXT] = list(encode_texts(run, captions))

    def arrays(self, kind: str, rows: list[Any]) -> dict[str, np.ndarray]:
        if kind == SELECTION:
            return {"cells": np.stack([c for c, _ in rows]).astype(np.int32),
                    "entropy": np.stack([e for _, e in rows]).astype(np.float32)}
        if kind == CAPTION:
            return {"caption": np.asarray(rows, dtype=object)}
        if kind == COMPOSITE:
            return {"composite": np.stack(rows).astype(np.uint8)}
        return super().arrays(kind, rows)  # image, text

    def test_kinds(self, settings: ExtractSettings | None) -> tuple[str, ...]:
        return tuple(image_kind(k) for k in range(settings.views if settings else 1))

    def width(self, backbone: Any, spec: Any) -> int:
        return int(backbone.embed_dim)

    def infer(self, backbone: Any, spec: Any, images: Sequence[np.ndarray],
              ids: Sequence[str], amp: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError("new images of the composite recipe are scored by "
                                  "nsnet.inference.predict's chain (selection, captions, views)")


def encode_images(run: RecipeRun, composites: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) uint8 -> (n, d) float16 CLIP image embeddings, ``run.batch_size`` at a
    time."""
    clip, bs = run.models[MAIN], run.batch_size
    if not len(composites):
        return np.empty((0, clip.embed_dim), np.float16)
    return np.concatenate([clip.encode_images(composites[i:i + bs], run.amp).cpu().numpy()
                           .astype(np.float16) for i in range(0, len(composites), bs)])


def encode_texts(run: RecipeRun, captions: list[str]) -> np.ndarray:
    clip, bs = run.models[MAIN], run.batch_size
    if not captions:
        return np.empty((0, clip.embed_dim), np.float16)
    return np.concatenate([clip.encode_texts(captions[i:i + bs], run.amp).cpu().numpy()
                           .astype(np.float16) for i in range(0, len(captions), bs)])


COMPOSITE_RECIPE = RECIPES.register("composite", Composite())
