"""What every detection head returns: ``HeadOutput``."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadOutput:
    logit: torch.Tensor  # (B,)
    embedding: torch.Tensor | None  # (B, proj_dim) for the contrastive loss
    projected: torch.Tensor  # (B, d) the feature the classifier saw
    semantic: torch.Tensor | None = None  # (B, d) mapped caption direction (advanced)
