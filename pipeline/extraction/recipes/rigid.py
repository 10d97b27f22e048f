"""``rigid``: the input of RIGID (He et al. 2024, "RIGID: A Training-free and Model-Agnostic
Framework for Robust AI-Generated Image Detection"): a real image's embedding moves less than a
generated one's when a little Gaussian noise is added to its pixels.

Per image and treatment, one part with ``emb`` (2, d) float16: the projected CLIP image
embedding (as ``clip_crop``'s) of the image after CLIP's own preprocessing (bicubic
shorter-side resize to 224, 224 center crop), row 0, and of the same input with Gaussian noise
of standard deviation ``NOISE`` added in the model's normalised input space, row 1. The noise
is seeded by the image's content id, so extraction (and predict) give the same rows on every
run, batch and device up to float error. The paper embeds with DINOv2 and perturbs with noise
of level 0.05 (its default); we use the project's CLIP (``clip.arch``, ``clip.pretrained``),
already loaded for the other recipes, so no second backbone is needed. It exists for every split
(no training crops); the head (``1 - cos`` of the two rows) is ``nsnet.heads.methods.rigid``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from nsnet.cache_store import Part
from nsnet.extraction.recipe import MAIN, Recipe, RecipeRun, in_chunks
from nsnet.extraction.settings import ExtractSettings
from nsnet.provenance import code_fingerprint
from nsnet.registry import RECIPES

if TYPE_CHECKING:
    import torch

    from nsnet.extraction.image_pass import ImageWork

NOISE = 0.05  # std of the noise in the normalised input space (the paper's level)


class Rigid(Recipe):
    name = "rigid"
    rank = 40

    def parts(self, settings: ExtractSettings, treatment: str, pixel_code: tuple
              ) -> dict[str, Part]:
        from nsnet.backbones.clip import IMAGE_CODE
        from nsnet.backbones.recipes import RIGID_CODE

        return {self.name: Part(self.name, {
            "treatment": treatment, "clip": asdict(settings.clip),
            "compute": {"precision": settings.precision}, "noise": NOISE,
            "code": code_fingerprint(*RIGID_CODE, NOISE, *IMAGE_CODE, *pixel_code)})}

    def task(self, run: RecipeRun) -> bool:
        return True

    def derive(self, task: bool, rgb: np.ndarray, work: ImageWork, j: int
               ) -> dict[str, np.ndarray]:
        from nsnet.backbones import recipes

        return {self.name: self.test_pixels(rgb),
                f"{self.name}.noise": recipes.rigid_noise(work.image_id)}

    def embed(self, run: RecipeRun, task: bool, batch: Mapping[str, torch.Tensor]
              ) -> dict[str, Sequence[Any]]:
        from nsnet.backbones import recipes

        clip = run.models[MAIN]
        pixels, noise = batch[self.name].numpy(), batch[f"{self.name}.noise"].numpy()
        (emb,) = in_chunks(run, np.arange(len(pixels)), lambda i: recipes.rigid_embeddings(
            clip, pixels[i], noise[i], NOISE, run.amp))
        return {self.name: emb.astype(np.float16)}

    def test_pixels(self, rgb: np.ndarray) -> np.ndarray:
        from nsnet.backbones import recipes

        return recipes.clip_preprocess(rgb)

    def width(self, backbone: Any, spec: Any) -> int:
        return 2 * int(backbone.embed_dim)


RECIPES.register("rigid", Rigid())
