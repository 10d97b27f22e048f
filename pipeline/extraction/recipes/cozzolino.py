"""``cozzolino``: Cozzolino et al. 2024's input, the L2-normalised pre-projection class token of
their own OpenCLIP backbone (``recipes.cozzolino_arch``, ``recipes.cozzolino_pretrained``:
ViT-L/14 CommonPool-XL) on a bicubic shorter-side resize to 224 and a 224 center crop
(``nsnet.backbones.recipes``); the same for every split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from nsnet.cache_store import Part
from nsnet.config import Params
from nsnet.extraction.recipe import Recipe, RecipeRun, in_chunks
from nsnet.extraction.settings import ClipSpec, ExtractSettings
from nsnet.provenance import code_fingerprint
from nsnet.registry import RECIPES

if TYPE_CHECKING:
    import torch

    from nsnet.backbones.availability import Need
    from nsnet.extraction.image_pass import ImageWork


class Cozzolino(Recipe):
    name = "cozzolino"
    rank = 30
    role = "cozzolino"  # its own backbone, loaded beside the main CLIP

    def spec(self, params: Params) -> ClipSpec:
        return ClipSpec(params.recipes.cozzolino_arch, params.recipes.cozzolino_pretrained)

    def provenance(self, spec: ClipSpec) -> dict[str, Any]:
        return {"cozzolino_arch": spec.arch, "cozzolino_pretrained": spec.pretrained}

    def parts(self, settings: ExtractSettings, treatment: str, pixel_code: tuple
              ) -> dict[str, Part]:
        from nsnet.backbones.clip import IMAGE_CODE
        from nsnet.backbones.recipes import COZZOLINO_CODE

        return {self.name: Part(self.name, {
            "treatment": treatment, "backbone": asdict(settings.spec(self.name)),
            "compute": {"precision": settings.precision},
            "code": code_fingerprint(*COZZOLINO_CODE, *IMAGE_CODE, *pixel_code)})}

    def needs(self, settings: ExtractSettings, kinds: tuple[str, ...]) -> dict[str, Need]:
        from nsnet.backbones.availability import Need

        spec = settings.spec(self.name)
        return {self.role: Need("clip", spec.arch, spec.pretrained,
                                ("recipes.cozzolino_arch", "recipes.cozzolino_pretrained"))}

    def task(self, run: RecipeRun) -> bool:
        return True

    def derive(self, task: bool, rgb: np.ndarray, work: ImageWork, j: int
               ) -> dict[str, np.ndarray]:
        return {self.name: self.test_pixels(rgb)}

    def embed(self, run: RecipeRun, task: bool, batch: Mapping[str, torch.Tensor]
              ) -> dict[str, Sequence[Any]]:
        from nsnet.backbones import recipes

        model = run.models[self.role]
        (feat,) = in_chunks(run, batch[self.name].numpy(),
                            lambda p: recipes.cozzolino_features(model, p, run.amp))
        return {self.name: feat.astype(np.float16)}

    def own_backbone(self, spec: ClipSpec) -> tuple[str, str]:
        return spec.arch, spec.pretrained

    def test_pixels(self, rgb: np.ndarray) -> np.ndarray:
        from nsnet.backbones import recipes

        return recipes.cozzolino_pixels(rgb)

    def width(self, backbone: Any, spec: Any) -> int:
        return int(backbone.model.visual.ln_post.normalized_shape[0])


RECIPES.register("cozzolino", Cozzolino())
