"""``rigid``: RIGID (He et al. 2024, "RIGID: A Training-free and Model-Agnostic Framework for
Robust AI-Generated Image Detection"), training-free.

Real images sit where a foundation model's embedding is stable: adding a little Gaussian noise
to the pixels moves a real image's embedding less than a generated one's. The score is
``1 - cos(e(x), e(x + noise))``, from the recipe ``rigid`` (both embeddings of one decode,
``nsnet.extraction.recipes.rigid``: the paper uses DINOv2; we use the project's CLIP, already
loaded for the other recipes). As in the paper the threshold comes from real images only: the
95th percentile of the validation reals' scores (95% of them called real), falling back to the
training reals without validation rows. The logit is ``(score - threshold) / spread`` with
``spread`` the reals' standard deviation, so fake when the logit > 0.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nsnet.extraction.cached_features import iter_blocks
from nsnet.heads.method import FitInputs, Method, register, training_free
from nsnet.heads.output import HeadOutput

REAL_QUANTILE = 0.95  # the share of (validation) reals called real: the paper's 95% TPR


class Rigid(nn.Module):
    """``1 - cos`` of the clean and noised embeddings, centred on the reals' threshold."""

    def __init__(self, dim: int, **_: object) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("spread", torch.tensor(1.0))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        pair = x.float().reshape(len(x), 2, self.dim)  # row 0 clean, row 1 noised
        return 1.0 - F.cosine_similarity(pair[:, 0], pair[:, 1], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        clean = x.float().reshape(len(x), 2, self.dim)[:, 0]
        logit = (self.score(x) - self.threshold) / self.spread
        return HeadOutput(logit, None, clean, prepared=clean)


def pair_width(fs) -> tuple[int, dict[str, int]]:
    """The rows are (2, d) embedding pairs: the head's width is d."""
    row = list(fs.provenance.get("row_shape") or [fs.dim])
    return (row[-1] if len(row) == 2 else fs.dim // 2), {}


def reals_threshold(model: torch.nn.Module, fit: FitInputs) -> dict[str, Any]:
    """The threshold and spread from the validation reals (else the training reals)."""
    rows, where = fit.val, "validation"
    if rows is None or not (rows.labels == 0).any():
        rows, where = fit.train, "training"
    reals = rows.subset((rows.labels == 0).numpy())
    scores = torch.cat([model.score(b.reshape(len(b), -1)) for b in iter_blocks(reals.image)]
                       ).double()
    threshold = float(torch.quantile(scores, REAL_QUANTILE))
    spread = max(float(scores.std()) if len(scores) > 1 else 0.0, 1e-6)
    with torch.no_grad():
        model.threshold.fill_(threshold)
        model.spread.fill_(spread)
    return {"fitted": {"threshold_from": f"{where} reals", "reals": len(reals),
                       "quantile": REAL_QUANTILE, "threshold": threshold, "spread": spread}}


register(Method("rigid", Rigid, recipe="rigid", shape=pair_width, schedule=training_free,
                prepare=reals_threshold,
                title="RIGID: embedding change under small pixel noise, threshold from reals "
                      "(training-free)"))
