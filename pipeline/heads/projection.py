"""Null-space projections that remove the semantic part of CLIP image features."""

from __future__ import annotations

import torch


def semantic_basis(text: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """NS-Net's semantic subspace: top-``k`` right singular vectors of the caption matrix.

    ``text``: (n, d) training-caption embeddings. Returns ``V_k`` (d, k) with orthonormal
    columns and the fraction of the caption matrix's energy (sum of squared singular values)
    that those k directions explain.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    t = text.to(torch.float64)
    _, s, vh = torch.linalg.svd(t, full_matrices=False)
    k = min(k, vh.shape[0])
    energy = s.square()
    explained = float(energy[:k].sum() / energy.sum()) if energy.sum() > 0 else 0.0
    return vh[:k].T.to(text.dtype).contiguous(), explained


def project_out_subspace(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``x P`` with ``P = I - V V^T`` for orthonormal ``V`` (d, k), in O(d k) per row."""
    if basis.shape[1] == 0:
        return x
    return x - (x @ basis) @ basis.T


def project_out_direction(x: torch.Tensor, f: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample rank-1 projection ``x_i - (x_i . f_i) / (f_i . f_i) f_i`` for (B, d) inputs.

    This is ``x_i P_i`` with ``P_i = I - f_i f_i^T / ||f_i||^2`` (the slides' ``||f||`` in the
    denominator would not be a projection), computed in O(d) per sample and batched: no d x d
    matrix is ever formed.
    """
    coef = (x * f).sum(-1, keepdim=True) / (f * f).sum(-1, keepdim=True).clamp_min(eps)
    return x - coef * f
