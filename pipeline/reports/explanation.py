"""The record of one explanation: per-patch occlusion contributions and the verdict.

``nsnet.inference.explain`` fills it; ``nsnet.reports.figures`` draws it and ``to_json``
writes it, so the picture and the JSON come from one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nsnet.extraction.patch_selection import PatchSpec


def contribution_text(value: float) -> str:
    """A contribution with its sign and 3 significant digits (``+1.83e-05``, ``-0.0421``):
    small ones keep their size instead of reading ``+0.0000``."""
    return f"{value:+.3g}"


@dataclass
class PatchReport:
    index: int  # position in the 7 x 7 grid, row-major
    row: int  # top pixel of the patch in the (EXIF-oriented) image
    col: int  # left pixel
    entropy: float  # spectral entropy (bits)
    band: str  # "low" (smooth) or "high" (textured) spectral entropy
    contribution: float  # logit(original) - logit(occluded); > 0 pushed toward generated
    delta_prob: float  # prob(original) - prob(occluded)
    contrast: float = 0.0  # standard deviation of the patch's luma (0-255); ~0 = flat


@dataclass
class Explanation:
    path: str
    id: str
    width: int
    height: int
    prob: float
    label: str
    threshold: float
    logit: float
    caption: str  # "" when the head reads no caption (JSON: null, as predict and the API)
    head: str
    semantic_removed: float  # ||x - Px|| / ||x|| of the (normalised) image feature
    patches: list[PatchReport]
    composite: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    spec: PatchSpec = field(repr=False, default_factory=PatchSpec)
    uncertain_band: float = 0.0  # |prob - threshold| < band is "uncertain"
    warning: str = ""  # e.g. the selection saw no image content (only a flat border)
    input_kind: str = "composite"  # "composite" (the selected patches) or "crop" (a baseline's
    # 224 px crop in 7 x 7 tiles; then ``image`` is that crop and rows/cols are within it)

    @property
    def on_patches(self) -> bool:
        """Whether the input attributed is the selected patches' composite (else a crop)."""
        return self.input_kind != "crop"

    def top(self, k: int = 5, sign: int = 1) -> list[PatchReport]:
        """The ``k`` patches that pushed most toward generated (sign=1) or real (sign=-1)."""
        ranked = sorted(self.patches, key=lambda p: -sign * p.contribution)
        return [p for p in ranked[:k] if sign * p.contribution > 0]

    def to_json(self, k: int = 5) -> dict[str, Any]:
        def rows(ps: list[PatchReport]) -> list[dict[str, Any]]:
            return [p.__dict__ for p in ps]

        return {"path": self.path, "id": self.id, "width": self.width, "height": self.height,
                "prob_generated": self.prob, "label": self.label, "threshold": self.threshold,
                "uncertain_band": self.uncertain_band, "warning": self.warning or None,
                "logit": self.logit, "caption": self.caption or None, "head": self.head,
                "semantic_removed": self.semantic_removed,
                "attribution": f"occlusion: each grid tile replaced by the {self.input_kind}'s "
                               "mean colour; contribution = logit(original) - logit(occluded)",
                "input": self.input_kind,
                "patch_size": self.spec.size,
                "top_generated": rows(self.top(k, 1)), "top_real": rows(self.top(k, -1)),
                "patches": rows(self.patches)}
