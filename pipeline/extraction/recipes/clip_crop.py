"""``clip_crop``: UniversalFakeDetect's input (Ojha et al. 2023), CLIP's projected embedding of
224 px crops of each image (``nsnet.backbones.recipes``).

Crop 0 is the test-time center crop (``validate.py``, no resize), for every image; crops
1..``recipes.crop_augmentations`` are the training augmentation's (``data/datasets.py``), seeded
by (image id, crop), for training images only. Crop 0 shares one forward pass with
``clip_layers``' crop 0 when both are extracted (``center_tower``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nsnet.cache_store import Part
from nsnet.config import Params
from nsnet.extraction.recipe import MAIN, Recipe, RecipeRun, center_tower, in_chunks
from nsnet.extraction.settings import ExtractSettings, crop_kind, kind_view
from nsnet.provenance import code_fingerprint
from nsnet.registry import RECIPES

if TYPE_CHECKING:
    import torch

    from nsnet.extraction.image_pass import ImageWork


@dataclass(frozen=True)
class CropSpec:
    """How many crops per training image: crop 0 + ``recipes.crop_augmentations``."""

    crops: int


class ClipCrop(Recipe):
    name = "clip_crop"
    rank = 10

    def spec(self, params: Params) -> CropSpec:
        return CropSpec(1 + params.recipes.crop_augmentations)

    def provenance(self, spec: CropSpec) -> dict[str, Any]:
        return {"crop_augmentations": spec.crops - 1}

    def parts(self, settings: ExtractSettings, treatment: str, pixel_code: tuple
              ) -> dict[str, Part]:
        from nsnet.backbones.clip import IMAGE_CODE
        from nsnet.backbones.recipes import CLIP_CROP_CODE

        base = {"treatment": treatment, "clip": asdict(settings.clip),
                "compute": {"precision": settings.precision}}
        code = code_fingerprint(*CLIP_CROP_CODE, *IMAGE_CODE, *pixel_code)
        return {crop_kind(self.name, k): Part(self.name, {
            **base, "crop": k, "augment": "univfd" if k else "center_crop", "code": code})
            for k in range(settings.spec(self.name).crops)}

    def training_only(self, kind: str) -> bool:
        return kind_view(kind) > 0

    def task(self, run: RecipeRun) -> tuple[int, ...] | None:
        return run.views(self.name) or None  # the crop indices

    def derive(self, task: tuple[int, ...], rgb: np.ndarray, work: ImageWork, j: int
               ) -> dict[str, np.ndarray]:
        from nsnet.backbones import recipes

        crops = recipes.crop_set(rgb, work.image_id, max(task) + 1, recipes.UNIVFD_TRAIN)
        return {self.name: crops[list(task)]}

    def embed(self, run: RecipeRun, task: tuple[int, ...], batch: Mapping[str, torch.Tensor]
              ) -> dict[str, Sequence[Any]]:
        from nsnet.backbones import recipes

        clip, out = run.models[MAIN], {}
        for i, view in enumerate(task):
            pixels = batch[self.name][:, i].numpy()
            if view:
                (emb,) = in_chunks(run, pixels,
                                   lambda p: recipes.clip_crop_embeddings(clip, p, run.amp))
            else:  # the test-time crop: one pass with clip_layers' crop 0
                emb = center_tower(run, pixels)[0]
            out[crop_kind(self.name, view)] = emb.astype(np.float16)
        return out

    def test_kinds(self, settings: ExtractSettings | None) -> tuple[str, ...]:
        return (crop_kind(self.name, 0),)

    def train_kinds(self, settings: ExtractSettings) -> tuple[str, ...]:
        return tuple(crop_kind(self.name, k) for k in range(1, settings.spec(self.name).crops))

    def inference_spec(self, facts: Any) -> CropSpec:
        return CropSpec(1)

    def test_pixels(self, rgb: np.ndarray) -> np.ndarray:
        from nsnet.backbones import recipes

        return recipes.center_crop(rgb)

    def width(self, backbone: Any, spec: Any) -> int:
        return int(backbone.embed_dim)


RECIPES.register("clip_crop", ClipCrop())
