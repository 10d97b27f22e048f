"""``nsnet``: NS-Net (Yan et al. 2025). A fixed null-space projection ``P = I - V_k V_k^T`` of
the top-k principal directions of the training captions' CLIP embeddings, then an MLP head
trained with SupCon + BCE."""

from __future__ import annotations

from typing import Any

import torch

from nsnet.heads.detectors import NSNet
from nsnet.heads.method import FitInputs, Method, register
from nsnet.heads.projection import semantic_basis


def fit_null_space(model: torch.nn.Module, fit: FitInputs) -> dict[str, Any]:
    """The semantic basis from the training captions (``train.nsnet_k`` directions)."""
    tp = fit.params.train
    basis, explained = semantic_basis(fit.train.text, tp.nsnet_k, normalize=tp.normalize)
    model.set_basis(basis)
    return {"nsnet_k": int(basis.shape[1]), "explained_variance": float(explained)}


register(Method("nsnet", NSNet, recipe="composite", prepare=fit_null_space, published="nsnet",
                title="NS-Net: fixed caption null-space projection, then an MLP head"))
