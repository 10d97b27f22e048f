"""Null-space projections that remove the semantic part of CLIP image features."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F


class Sliceable(Protocol):
    """A (n, d) row store: a tensor, or memory-mapped rows that slice into tensors."""

    shape: Any

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice) -> torch.Tensor: ...


def semantic_basis(text: Sliceable, k: int, normalize: bool = False,
                   block: int = 65536) -> tuple[torch.Tensor, float]:
    """NS-Net's semantic subspace: top-``k`` right singular vectors of the caption matrix T.

    ``text``: (n, d) training-caption embeddings (a tensor or anything sliceable into tensors,
    e.g. memory-mapped rows), L2-normalised row-wise first when ``normalize``. The right
    singular vectors of T are the eigenvectors of the Gram matrix T^T T (d x d, accumulated in
    float64 over row blocks, so memory does not grow with n), and the squared singular values
    are its eigenvalues. Returns ``V_k`` (d, k) float32 with orthonormal columns (k clipped to
    the rank bound min(n, d)) and the fraction of T's energy (sum of squared singular values)
    that those k directions explain.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    n, d = len(text), text.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, block):
        b = text[i:i + block].to(torch.float64)
        if normalize:
            b = F.normalize(b, dim=-1)
        gram += b.T @ b
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    k = min(k, n, d)
    vk = evecs[:, :k]
    vk = vk * torch.where(vk.sum(0) < 0, -1.0, 1.0)  # deterministic sign
    total = float(evals.sum())
    explained = float(evals[:k].sum()) / total if total > 0 else 0.0
    return vk.to(torch.float32).contiguous(), explained


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
