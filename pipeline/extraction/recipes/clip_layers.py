"""``clip_layers``: RINE's input (Koutlis & Papadopoulos 2024), the class token of ``ln_2``'s
output in every chosen transformer block of CLIP's image tower (``recipes.layers``), per 224 px
crop (``nsnet.backbones.recipes``).

Crop 0 is the test-time center crop, for every image (one forward pass with ``clip_crop``'s
crop 0 when both are extracted); crops 1..``recipes.layer_augmentations`` are RINE's training
augmentation, for training images only. Rows are (blocks, width); readers get them flattened.
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
class LayersSpec:
    """Crops per training image (crop 0 + ``recipes.layer_augmentations``) and the blocks read
    (``recipes.layers``: increasing indices, or ``all``)."""

    crops: int
    layers: tuple[int, ...] | str

    @property
    def chosen(self) -> list[int] | None:
        """The blocks as ``image_tower`` takes them (None: all)."""
        return None if isinstance(self.layers, str) else list(self.layers)


class ClipLayers(CroppedRecipe):
    name = "clip_layers"
    rank = 20
    augment = "RINE_TRAIN"
    tower_output = 1  # the class tokens of the blocks read

    def spec(self, params: Params) -> LayersSpec:
        r = params.recipes
        return LayersSpec(1 + r.layer_augmentations,
                          r.layers if isinstance(r.layers, str) else tuple(r.layers))

    def provenance(self, spec: LayersSpec) -> dict[str, Any]:
        return {"layer_augmentations": spec.crops - 1,
                "layers": spec.layers if isinstance(spec.layers, str) else list(spec.layers)}

    def parts(self, settings: ExtractSettings, treatment: str, pixel_code: tuple
              ) -> dict[str, Part]:
        from nsnet.backbones.clip import IMAGE_CODE
        from nsnet.backbones.recipes import CLIP_LAYERS_CODE

        spec = settings.spec(self.name)
        base = {"treatment": treatment, "clip": asdict(settings.clip),
                "compute": {"precision": settings.precision}}
        layers = self.provenance(spec)["layers"]
        code = code_fingerprint(*CLIP_LAYERS_CODE, *IMAGE_CODE, *pixel_code)
        return {crop_kind(self.name, k): Part(self.name, {
            **base, "crop": k, "augment": "rine" if k else "center_crop", "layers": layers,
            "code": code}) for k in range(spec.crops)}

    def center_tokens(self, run: RecipeRun) -> tuple[int, ...] | str | None:
        return run.spec.layers if 0 in run.views(self.name) else None

    def embed_crops(self, run: RecipeRun, pixels: np.ndarray) -> np.ndarray:
        from nsnet.backbones import recipes

        clip, chosen = run.models[MAIN], run.spec.chosen
        (toks,) = in_chunks(run, pixels, lambda p: recipes.clip_layers(clip, p, chosen, run.amp))
        return toks

    def bundle_facts(self, spec: LayersSpec) -> dict[str, Any]:
        return {"layers": spec.layers}

    def inference_spec(self, facts: Any) -> LayersSpec:
        return LayersSpec(1, facts.layers if facts is not None else "all")

    def width(self, backbone: Any, spec: LayersSpec) -> int:
        from nsnet.backbones import recipes

        blocks = recipes.all_layers(backbone) if spec.chosen is None else spec.chosen
        return len(blocks) * int(backbone.model.visual.transformer.width)


RECIPES.register("clip_layers", ClipLayers())
