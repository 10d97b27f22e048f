"""Losses of the detection heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the "L_out" form), batched.

    ``z``: (B, D) embeddings (normalised here); ``labels``: (B,). For each anchor, the positives
    are the other samples with its label; anchors without a positive are ignored.
    """
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    b = z.shape[0]
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not valid.any():
        return z.sum() * 0.0
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[valid] / n_pos[valid]
    return -mean_log_prob_pos.mean()


def bce_loss(logit: torch.Tensor, labels: torch.Tensor,
             pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits; ``pos_weight`` = n_real / n_fake balances classes."""
    return F.binary_cross_entropy_with_logits(logit, labels.float(), pos_weight=pos_weight)
