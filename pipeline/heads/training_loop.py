"""Training a detection head over cached features (seconds per epoch, no image opened).

Features live in memory as tensors (or stay memory-mapped when the cache is larger than RAM);
each step gathers a batch by index, so the loop does no Python work per sample. Runs on CPU or
GPU, is deterministic for a given seed, keeps the best epoch by validation AP and logs every
epoch. A non-finite loss or feature stops training with ``TrainingDiverged`` instead of
producing a broken model.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.backbones.clip import resolve_device
from pipeline.config import TrainParams
from pipeline.extraction.cached_features import FeatureSet, Rows, iter_blocks
from pipeline.heads.detectors import build_head
from pipeline.heads.losses import bce_loss, supcon_loss
from pipeline.heads.projection import semantic_basis
from pipeline.metrics import binary_metrics


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


def _check_finite(name: str, rows: Rows) -> None:
    """Raise ``TrainingDiverged`` if any feature is NaN/inf (checked block by block)."""
    bad = sum(int((~torch.isfinite(b)).any(dim=-1).sum()) for b in iter_blocks(rows))
    if bad:
        raise TrainingDiverged(
            f"{name} contain NaN/inf values ({bad} rows): the feature cache is broken; "
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
def predict_logits(model: torch.nn.Module, image: Rows, text: Rows,
                   batch_size: int = 8192) -> np.ndarray:
    """The head's raw logit for every row, in batches."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(image), batch_size):
        x = image[i:i + batch_size].to(device).float()
        t = text[i:i + batch_size].to(device).float()
        out.append(model(x, t).logit.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def predict_proba(model: torch.nn.Module, image: Rows, text: Rows,
                  batch_size: int = 8192) -> np.ndarray:
    """Probability of 'generated' for every row (uncalibrated sigmoid of the logit)."""
    logits = torch.from_numpy(predict_logits(model, image, text, batch_size))
    return torch.sigmoid(logits).numpy()


EpochCallback = Callable[[dict[str, float]], None]


def _prepare(kind: str, train: FeatureSet, tp: TrainParams, device: torch.device
             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the head (seeded) and, for NS-Net, fit its semantic basis on the training captions."""
    model = build_head(kind, train.image.shape[1], **{k: getattr(tp, k) for k in HPARAM_KEYS})
    info: dict[str, Any] = {}
    if kind == "nsnet":
        basis, explained = semantic_basis(train.text, tp.nsnet_k, normalize=tp.normalize)
        model.set_basis(basis)
        info = {"nsnet_k": basis.shape[1], "explained_variance": explained}
    return model.to(device), info


def _on_device(rows: Rows, device: torch.device) -> Rows:
    """In-RAM features go to the GPU once (as stored, float16/32); mapped ones stay mapped."""
    if device.type == "cuda" and isinstance(rows, torch.Tensor):
        return rows.to(device)
    return rows


def fit(kind: str, train: FeatureSet, val: FeatureSet | None, tp: TrainParams,
        log: list[dict[str, float]] | None = None,
        on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train head ``kind`` on ``train``; keep the epoch with the best validation AP.

    Every epoch appends a row (train_loss, val_loss, val_ap, val_acc, val_auc, seconds) to
    ``log`` and passes it to ``on_epoch``. Deterministic for ``tp.seed`` on a given device (the
    global torch RNG is left as it was).
    """
    if len(train) < 2 or train.frame["label"].nunique() < 2:
        raise ValueError(
            f"the training set needs real and fake images (got {len(train)} rows, labels "
            f"{sorted(train.frame['label'].unique())}); check data.roots and protocol"
        )
    _check_finite("training image features", train.image)
    _check_finite("training text features", train.text)
    if val is not None and len(val):  # model selection on NaN scores would be meaningless
        _check_finite("validation image features", val.image)
        _check_finite("validation text features", val.text)
    device = resolve_device(tp.device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(tp.seed)
        return _fit(kind, train, val, tp, device, log if log is not None else [], on_epoch)


def _fit(kind: str, train: FeatureSet, val: FeatureSet | None, tp: TrainParams,
         device: torch.device, history: list[dict[str, float]],
         on_epoch: EpochCallback | None) -> TrainResult:
    model, info = _prepare(kind, train, tp, device)
    opt = torch.optim.Adam(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    gen = torch.Generator().manual_seed(tp.seed)
    x_all, t_all = _on_device(train.image, device), _on_device(train.text, device)
    y_all = train.labels.to(device)
    n = len(train)
    n_fake = int(train.labels.sum())
    pos_weight = torch.tensor((n - n_fake) / n_fake, device=device) if tp.balance else None
    info["class_counts"] = {"real": n - n_fake, "fake": n_fake}
    bs = min(tp.batch_size, n)
    rows_device = x_all.device if isinstance(x_all, torch.Tensor) else torch.device("cpu")
    y_val = val.frame["label"].to_numpy() if val is not None and len(val) else None
    best = ((-math.inf, -math.inf), 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, tp.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(rows_device)
        total = torch.zeros((), device=device)
        steps = 0
        for i in range(0, n - bs + 1, bs):  # drop the ragged last batch (SupCon needs pairs)
            idx = perm[i:i + bs]
            x = x_all[idx].to(device, non_blocking=True).float()
            t = t_all[idx].to(device, non_blocking=True).float()
            y = y_all[idx.to(device)]
            loss = head_loss(kind, model(x, t), y, x, tp, pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
        train_loss = float(total) / max(steps, 1)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"the training loss became {train_loss} in epoch {epoch}; lower train.lr or "
                "check the features. No model was written."
            )
        row = {"epoch": epoch, "train_loss": train_loss}
        score = (float(epoch), 0.0)  # no validation rows: keep the last epoch
        if y_val is not None:
            prob = predict_proba(model, val.image, val.text)
            m = binary_metrics(y_val, prob)
            p = np.clip(prob, 1e-7, 1 - 1e-7)
            row.update(val_loss=float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log1p(-p))),
                       val_ap=m["ap"], val_acc=m["acc"], val_auc=m["auc"])
            # Best val AP; ties (AP saturates early) go to the more accurate epoch.
            score = tuple(-math.inf if math.isnan(v) else v for v in (m["ap"], m["acc"]))
        row["epoch_seconds"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model, history, best[1], best[0][0], info)
