"""``advanced``: Advanced NS-Net. A per-sample projection ``x - (x.f)/(f.f) f`` of the image
feature, ``f`` made from the caption embedding as ``train.mapper`` says (``nsnet.heads.mappers``),
then the artifact head; a trained mapper adds the alignment term to the loss."""

from __future__ import annotations

from typing import Any

import torch

from nsnet.heads.detectors import AdvancedNSNet
from nsnet.heads.method import FitInputs, Method, project_loss, register
from nsnet.heads.semantic_map import fit_semantic_map
from nsnet.registry import MAPPERS


def fit_mapper(model: torch.nn.Module, fit: FitInputs) -> dict[str, Any]:
    """A ``regression*`` mapper's frozen ridge map, fit on the training rows it names."""
    tp = fit.params.train
    mapper = MAPPERS.get(tp.mapper)
    if not mapper.fitted:
        return {}
    labels = fit.train.labels
    rows = fit.train.subset((labels == 0).numpy()) if mapper.fit_on == "real" else fit.train
    fitted = fit_semantic_map(rows.text, rows.image, normalize=tp.normalize,
                              groups=labels if mapper.fit_on == "within" else None)
    model.mapper.set_map(fitted)
    return {"mapper_rows": len(rows), "mapper_r2": float(fitted.r2)}


def loss_with_alignment(out: Any, y: torch.Tensor, x: torch.Tensor, tp: Any,
                        pos_weight: torch.Tensor | None) -> torch.Tensor:
    """NS-Net's loss, plus ``align_weight`` MSE(f, image) when the mapper is trained."""
    loss = project_loss(out, y, x, tp, pos_weight)
    if tp.align_weight > 0 and MAPPERS.get(tp.mapper).trained:
        target = torch.nn.functional.normalize(x.float(), dim=-1) if tp.normalize else x.float()
        loss = loss + tp.align_weight * torch.nn.functional.mse_loss(out.semantic, target)
    return loss


register(Method("advanced", AdvancedNSNet, recipe="composite", captions=True,
                prepare=fit_mapper, loss=loss_with_alignment,
                title="Advanced NS-Net: per-sample projection orthogonal to the caption's "
                      "semantic direction, then an MLP head"))
