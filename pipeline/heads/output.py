"""What every detection head returns: ``HeadOutput``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class HeadOutput:
    logit: torch.Tensor  # (B,)
    embedding: torch.Tensor | None  # (B, proj_dim) for the contrastive loss
    projected: torch.Tensor  # (B, d) the feature the classifier saw
    semantic: torch.Tensor | None = None  # (B, d) mapped caption direction (advanced)
    # (B, d) the image feature as the head takes it in, before any projection (L2-normalised
    # when the head normalises): ``prepared - projected`` is what the head removed as semantic
    # (``pipeline.inference.predict.semantic_shares``, the t-SNE's "before" points)
    prepared: torch.Tensor = field(kw_only=True)
