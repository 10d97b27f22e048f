"""Training a detection head over cached features (seconds per epoch, no image opened).

Features live in memory as tensors; each step gathers a batch by index, so the loop does no
Python work per sample. Runs on CPU or GPU, is deterministic for a given seed, keeps the best
epoch by validation AP and logs every epoch. A non-finite loss or feature stops training with a
message instead of producing a broken model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.config import TrainParams
from pipeline.features import FeatureSet
from pipeline.heads.detectors import build_head
from pipeline.heads.losses import bce_loss, supcon_loss
from pipeline.heads.projection import semantic_basis
from pipeline.metrics import binary_metrics
from pipeline.models.clip import resolve_device


class TrainingDiverged(RuntimeError):
    """The loss or the input features became NaN/inf."""


HPARAM_KEYS = ("hidden_dim", "proj_dim", "dropout", "nsnet_k", "normalize")


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_val_ap: float
    info: dict[str, Any] = field(default_factory=dict)


def _check_finite(name: str, t: torch.Tensor) -> None:
    if t.numel() and not bool(torch.isfinite(t.float()).all()):
        bad = int((~torch.isfinite(t.float())).any(dim=-1).sum()) if t.dim() > 1 else -1
        raise TrainingDiverged(
            f"{name} contains NaN/inf values ({bad} rows): the feature cache is broken; "
            "rebuild it with `nsnet embed` (or `dvc repro`)."
        )


def head_loss(kind: str, out: Any, y: torch.Tensor, x: torch.Tensor, tp: TrainParams,
              pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """UFD: BCE. NS-Net/advanced: (1-lambda) SupCon + lambda BCE (+ alignment for advanced)."""
    if kind == "ufd":
        return bce_loss(out.logit, y, pos_weight)
    loss = (1 - tp.bce_weight) * supcon_loss(out.embedding, y, tp.temperature) \
        + tp.bce_weight * bce_loss(out.logit, y, pos_weight)
    if kind == "advanced" and tp.align_weight > 0:
        target = torch.nn.functional.normalize(x.float(), dim=-1) if tp.normalize else x.float()
        loss = loss + tp.align_weight * torch.nn.functional.mse_loss(out.semantic, target)
    return loss


@torch.no_grad()
def predict_proba(model: torch.nn.Module, image: torch.Tensor, text: torch.Tensor,
                  batch_size: int = 8192) -> np.ndarray:
    """Probability of 'generated' for every row, in batches."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(image), batch_size):
        x = image[i:i + batch_size].to(device).float()
        t = text[i:i + batch_size].to(device).float()
        out.append(torch.sigmoid(model(x, t).logit).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def fit(kind: str, train: FeatureSet, val: FeatureSet | None, tp: TrainParams,
        log: list[dict[str, float]] | None = None) -> TrainResult:
    """Train head ``kind`` on ``train``; select the epoch with the best validation AP."""
    if len(train) < 2 or train.frame["label"].nunique() < 2:
        raise ValueError(
            f"the training set needs real and fake images (got {len(train)} rows, labels "
            f"{sorted(train.frame['label'].unique())}); check data.roots and protocol"
        )
    _check_finite("training image features", train.image)
    _check_finite("training text features", train.text)
    torch.manual_seed(tp.seed)
    device = resolve_device(tp.device)
    dim = train.image.shape[1]
    hparams = {k: getattr(tp, k) for k in HPARAM_KEYS}
    model = build_head(kind, dim, **hparams).to(device)
    info: dict[str, Any] = {}
    if kind == "nsnet":
        t = train.text.float()
        t = torch.nn.functional.normalize(t, dim=-1) if tp.normalize else t
        basis, explained = semantic_basis(t, tp.nsnet_k)
        model.set_basis(basis)
        info = {"nsnet_k": basis.shape[1], "explained_variance": explained}
    opt = torch.optim.Adam(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    gen = torch.Generator().manual_seed(tp.seed)
    x_all, t_all, y_all = train.image, train.text, train.labels
    n = len(train)
    n_fake = int(y_all.sum())
    pos_weight = torch.tensor((n - n_fake) / n_fake, device=device) if tp.balance else None
    info["class_counts"] = {"real": n - n_fake, "fake": n_fake}
    bs = min(tp.batch_size, n)
    history = log if log is not None else []
    best = ((-math.inf, -math.inf), 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, tp.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for i in range(0, n - bs + 1, bs):  # drop the ragged last batch (SupCon needs pairs)
            idx = perm[i:i + bs]
            x = x_all[idx].to(device, non_blocking=True).float()
            t = t_all[idx].to(device, non_blocking=True).float()
            y = y_all[idx].to(device, non_blocking=True)
            out = model(x, t)
            loss = head_loss(kind, out, y, x, tp, pos_weight)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch}, step {steps}; lower train.lr "
                    "or check the features. No model was written."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        row = {"epoch": epoch, "train_loss": total / max(steps, 1),
               "epoch_seconds": time.perf_counter() - t0}
        if val is not None and len(val):
            prob = predict_proba(model, val.image, val.text)
            m = binary_metrics(val.frame["label"].to_numpy(), prob)
            row.update(val_ap=m["ap"], val_acc=m["acc"], val_auc=m["auc"])
            # Best val AP; ties (AP saturates early) go to the better-calibrated epoch.
            score = tuple(-math.inf if math.isnan(v) else v for v in (m["ap"], m["acc"]))
        else:
            score = (float(epoch), 0.0)  # no validation set: keep the last epoch
        history.append(row)
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model, history, best[1], best[0][0], info)
