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
    # (``nsnet.inference.predict.semantic_shares``, the t-SNE's "before" points)
    prepared: torch.Tensor = field(kw_only=True)

    @property
    def removed_share(self) -> torch.Tensor:
        """``||x - Px|| / ||x||`` per row: the share of the input removed as semantic (0 for
        heads that remove nothing)."""
        x = self.prepared
        if x.shape != self.projected.shape:
            return torch.zeros(len(x))
        return (x - self.projected).norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)


def device_of(model: torch.nn.Module) -> torch.device:
    """Where a head's tensors live (parameters, or buffers for a training-free head)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
