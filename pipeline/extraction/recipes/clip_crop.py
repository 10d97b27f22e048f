"""``clip_crop``: UniversalFakeDetect's input (Ojha et al. 2023), CLIP's projected embedding of
224 px crops of each image (``nsnet.backbones.recipes``).

Crop 0 is the test-time center crop (``validate.py``, no resize), for every image; crops
1..``recipes.crop_augmentations`` are the training augmentation's (``data/datasets.py``), seeded
by (image id, crop), for training images only. Crop 0 shares one forward pass with
``clip_layers``' crop 0 when both are extracted (``center_tower``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nsnet.cache_store import Part
from nsnet.config import Params
from nsnet.extraction.recipe import MAIN, CroppedRecipe, RecipeRun, in_chunks
from nsnet.extraction.settings import ExtractSettings, crop_kind
from nsnet.provenance import code_fingerprint
from nsnet.registry import RECIPES

if TYPE_CHECKING:

    pass


@dataclass(frozen=True)
class CropSpec:
    """How many crops per training image: crop 0 + ``recipes.crop_augmentations``."""

    crops: int


class ClipCrop(CroppedRecipe):
    name = "clip_crop"
    rank = 10
    augment = "UNIVFD_TRAIN"
    tower_output = 0  # the projected embedding

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

    def embed_crops(self, run: RecipeRun, pixels: np.ndarray) -> np.ndarray:
        from nsnet.backbones import recipes

        clip = run.models[MAIN]
        (emb,) = in_chunks(run, pixels, lambda p: recipes.clip_crop_embeddings(clip, p, run.amp))
        return emb

    def inference_spec(self, facts: Any) -> CropSpec:
        return CropSpec(1)

    def width(self, backbone: Any, spec: Any) -> int:
        return int(backbone.embed_dim)


RECIPES.register("clip_crop", ClipCrop())
