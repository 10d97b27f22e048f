"""Training a detection head over cached features (seconds per epoch, no image opened).

Features live in memory as tensors (or stay memory-mapped when the cache is larger than RAM);
each step gathers a batch by index, so the loop does no Python work per sample. Runs on CPU or
GPU, is deterministic for a given seed, keeps the best epoch by validation AP and logs every
epoch. A non-finite loss or feature stops training with ``TrainingDiverged`` instead of
producing a broken model.

With K patch-order views per image (``patches.views``, features (n, K, d)) each epoch draws one
view per image (seeded by ``train.seed``, so still deterministic), like the reference code's
reshuffling at every call; scoring averages the K views (``evaluate.view_average``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nsnet.backbones.clip import resolve_device
from nsnet.config import VIEW_AVERAGES, Params, TrainParams
from nsnet.extraction.cached_features import FeatureSet, Rows, iter_blocks
from nsnet.heads.baselines import Plateau
from nsnet.heads.detectors import HPARAM_KEYS
from nsnet.heads.head_training import HeadTraining
from nsnet.heads.method import FitInputs, Method, method
from nsnet.heads.output import device_of
from nsnet.heads.training_info import ClassCounts, TrainingInfo
from nsnet.metrics import binary_metrics
from nsnet.registry import RECIPES


class TrainingDiverged(RuntimeError):
    """The loss or the input features became NaN/inf."""


@dataclass
class TrainResult:
    """The trained head (its best epoch's weights), the per-epoch log and what training
    reports beside them."""

    model: torch.nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_val_ap: float
    info: TrainingInfo


def _check_finite(name: str, rows: Rows) -> None:
    """Raise ``TrainingDiverged`` if any feature is NaN/inf (checked block by block)."""
    bad = sum(int((~torch.isfinite(b)).flatten(1).any(dim=1).sum()) for b in iter_blocks(rows))
    if bad:
        raise TrainingDiverged(
            f"{name} contain NaN/inf values ({bad} rows): the feature store holds broken "
            "features; delete the parts `nsnet cache` lists as used (folders under "
            "cache/features/) and rerun `nsnet extract` (or `dvc repro`)."
        )


def head_loss(kind: str, out: Any, y: torch.Tensor, x: torch.Tensor, tp: TrainParams,
              pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The project's loss of head ``kind`` (its method's ``loss``): BCE for the composite
    probe, (1-lambda) SupCon + lambda BCE for NS-Net (+ alignment for a trained mapper)."""
    return method(kind).loss(out, y, x, tp, pos_weight)


@torch.no_grad()
def view_logits(model: torch.nn.Module, image: Rows, text: Rows,
                batch_size: int = 8192) -> torch.Tensor:
    """(n, K) head logits of every row and view ((n, d) image features: K = 1), on CPU."""
    model.eval()
    device = device_of(model)
    views = image.shape[1] if len(image.shape) == 3 else 1
    step = max(1, batch_size // views)
    out = []
    for i in range(0, len(image), step):
        x = image[i:i + step].to(device).float()
        t = text[i:i + step].to(device).float()
        if x.dim() == 3:
            b, k, d = x.shape
            logit = model(x.reshape(b * k, d), t.repeat_interleave(k, dim=0)).logit
            out.append(logit.float().reshape(b, k).cpu())
        else:
            out.append(model(x, t).logit.float()[:, None].cpu())
    return torch.cat(out) if out else torch.zeros((0, views))


def combine_views(logits: torch.Tensor, how: str = "mean_logit") -> torch.Tensor:
    """(n, K) view logits -> (n,) one logit per image: ``mean_logit`` their mean,
    ``mean_prob`` the logit of the views' mean probability, ``first`` view 0's."""
    if how not in VIEW_AVERAGES:
        raise ValueError(f"unknown view average {how!r}; choose one of {', '.join(VIEW_AVERAGES)}")
    if how == "first" or logits.shape[1] == 1:
        return logits[:, 0]
    if how == "mean_prob":
        return torch.logit(torch.sigmoid(logits.double()).mean(dim=1)).float()
    return logits.mean(dim=1)


def average_views(logits: torch.Tensor, how: str = "mean_logit") -> np.ndarray:
    """(n, K) view logits -> (n,) uncalibrated probabilities (``combine_views``)."""
    return torch.sigmoid(combine_views(logits, how)).numpy()


def predict_logits(model: torch.nn.Module, image: Rows, text: Rows, batch_size: int = 8192,
                   average: str = "mean_logit") -> np.ndarray:
    """The head's raw logit for every row, in batches (K views combined by ``average``)."""
    return combine_views(view_logits(model, image, text, batch_size), average).numpy()


def predict_proba(model: torch.nn.Module, image: Rows, text: Rows, batch_size: int = 8192,
                  average: str = "mean_logit") -> np.ndarray:
    """Probability of 'generated' for every row (uncalibrated sigmoid of the logit)."""
    logits = torch.from_numpy(predict_logits(model, image, text, batch_size, average))
    return torch.sigmoid(logits).numpy()


def _gather(rows: Rows, idx: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
    """Rows ``idx``; with views, row ``idx[j]``'s view ``view[j]`` only."""
    if view is None:
        return rows[idx]
    if isinstance(rows, torch.Tensor):
        return rows[idx, view]
    return rows[idx][torch.arange(len(idx)), view.cpu()]


EpochCallback = Callable[[dict[str, float]], None]


def _prepare(m: Method, train: FeatureSet, val: FeatureSet | None, params: Params,
             device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the head (seeded) and run its method's fit before training (NS-Net's semantic
    basis, the advanced head's frozen map, a training-free method's whole fit). Returns the
    head and what the fit captured (``TrainingInfo``'s nsnet_k / mapper_* / ...)."""
    tp = params.train
    dim, shape = head_shape(m.name, train)
    model = m.build(dim, **shape, **{k: getattr(tp, k) for k in HPARAM_KEYS})
    fitted = m.prepare(model, FitInputs(train, val, params)) if m.prepare else {}
    return model.to(device), fitted


def head_shape(kind: str, fs: FeatureSet) -> tuple[int, dict[str, int]]:
    """``build_head``'s width for ``fs``'s features and any argument the features decide
    (RINE: the number of transformer blocks), as head ``kind``'s method reads them."""
    return method(kind).shape(fs)


def _on_device(rows: Rows, device: torch.device) -> Rows:
    """In-RAM features go to the GPU once (as stored, float16/32); mapped ones stay mapped."""
    if device.type == "cuda" and isinstance(rows, torch.Tensor):
        return rows.to(device)
    return rows


def fit(kind: str, train: FeatureSet, val: FeatureSet | None, tp: TrainParams | Params,
        log: list[dict[str, float]] | None = None,
        on_epoch: EpochCallback | None = None, view_average: str = "mean_logit"
        ) -> TrainResult:
    """Train head ``kind`` on ``train``; keep the epoch with the best validation AP.

    Every epoch appends a row (train_loss, val_loss, val_ap, val_acc, val_auc, seconds) to
    ``log`` and passes it to ``on_epoch``. Deterministic for ``tp.seed`` on a given device (the
    global torch RNG is left as it was). With (n, K, d) features each epoch trains on one
    seeded random view per image; validation combines the views by ``view_average``.
    ``tp`` is ``train.*``, or the whole params (what a method's fit may read, e.g. the CLIP
    that made the features or its ``methods.<name>`` section).
    """
    params = tp if isinstance(tp, Params) else Params(train=tp)
    tp = params.train
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
        return _fit(method(kind), train, val, params, device,
                    log if log is not None else [], on_epoch, view_average)


@dataclass
class _Best:
    """The epoch kept so far: its selection score, number and weights."""

    score: tuple[float, ...]
    epoch: int
    state: dict[str, torch.Tensor]
    val_ap: float = float("nan")


def _selection_score(select: str, epoch: int, m: dict[str, float] | None) -> tuple[float, ...]:
    """Higher is better. ``best_val_ap`` breaks ties (AP saturates early) by accuracy."""
    if m is None or select == "last":
        return (float(epoch),)  # no validation rows (or the paper keeps the last epoch)
    keys = ("ap", "acc") if select == "best_val_ap" else ("acc", "ap")
    return tuple(-math.inf if math.isnan(m[k]) else m[k] for k in keys)


def _fit(meth: Method, train: FeatureSet, val: FeatureSet | None, params: Params,
         device: torch.device, history: list[dict[str, float]],
         on_epoch: EpochCallback | None, view_average: str) -> TrainResult:
    tp = params.train
    spec = meth.schedule(tp)
    model, fitted_info = _prepare(meth, train, val, params, device)
    opt = spec.make_optimizer(model.parameters())
    plateau = Plateau(spec.lr) if spec.plateau else None
    gen = torch.Generator().manual_seed(tp.seed)
    n = len(train)
    n_fake = int(train.labels.sum())
    pos_weight = torch.tensor((n - n_fake) / n_fake, device=device) \
        if tp.balance and not spec.own_loss else None
    views = RECIPES.get(train.provenance.get("recipe", meth.recipe)).patch_orders  # else crops
    info = TrainingInfo(class_counts=ClassCounts(n - n_fake, n_fake),
                        patch_views=train.n_views if views else 1,
                        crops=0 if views else train.n_views, schedule=spec,
                        **fitted_info)
    rows = (_on_device(train.image, device), _on_device(train.text, device),
            train.labels.to(device))
    best = _Best((-math.inf,), 0, copy.deepcopy(model.state_dict()))
    for epoch in range(1, spec.epochs + 1):
        t0 = time.perf_counter()
        row = {"epoch": epoch, "train_loss": _train_epoch(meth, model, opt, rows, train.n_views,
                                                          tp, spec, gen, pos_weight, epoch)}
        m = _validate(model, val, view_average, row)
        row["epoch_seconds"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        score = _selection_score(spec.select, epoch, m)
        if score > best.score:
            best = _Best(score, epoch, copy.deepcopy(model.state_dict()),
                         m["ap"] if m else float("nan"))
        if plateau is not None and m is not None:
            action = plateau.step(m["acc"])
            if action == "stop":
                break
            if action == "drop_lr":
                for group in opt.param_groups:
                    group["lr"] = plateau.lr
    if spec.epochs == 0:  # training-free: the fit is the model; its validation scores
        m = _validate(model, val, view_average, {})
        best.val_ap = m["ap"] if m else float("nan")
    model.load_state_dict(best.state)
    model.eval()
    return TrainResult(model, history, best.epoch, best.val_ap, info)


def _train_epoch(m: Method, model: torch.nn.Module, opt: torch.optim.Optimizer,
                 rows: tuple[Rows, Rows, torch.Tensor], n_views: int, tp: TrainParams,
                 spec: HeadTraining, gen: torch.Generator, pos_weight: torch.Tensor | None,
                 epoch: int) -> float:
    """One pass over the training rows in seeded order (one seeded view per image); the
    mean loss. The ragged last batch is dropped (SupCon needs pairs)."""
    model.train()
    x_all, t_all, y_all = rows
    device = y_all.device
    n = len(y_all)
    bs = min(spec.batch_size, n)
    rows_device = x_all.device if isinstance(x_all, torch.Tensor) else torch.device("cpu")
    perm = torch.randperm(n, generator=gen).to(rows_device)
    # one view per image per epoch (no draw with one view: the K = 1 stream is unchanged)
    pick = torch.randint(n_views, (n,), generator=gen).to(rows_device) \
        if n_views > 1 else None
    total = torch.zeros((), device=device)
    steps = 0
    for i in range(0, n - bs + 1, bs):
        idx = perm[i:i + bs]
        view = None if pick is None else pick[idx]
        x = _gather(x_all, idx, view).to(device, non_blocking=True).float()
        t = t_all[idx].to(device, non_blocking=True).float()
        y = y_all[idx.to(device)]
        out = model(x, t)
        loss = model.loss(out, y) if spec.own_loss else m.loss(out, y, x, tp, pos_weight)
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
    return train_loss


def _validate(model: torch.nn.Module, val: FeatureSet | None, view_average: str,
              row: dict[str, float]) -> dict[str, float] | None:
    """Validation metrics of this epoch, recorded in ``row`` (None without validation rows)."""
    if val is None or not len(val):
        return None
    y_val = val.frame["label"].to_numpy()
    prob = predict_proba(model, val.image, val.text, average=view_average)
    m = binary_metrics(y_val, prob)
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    row.update(val_loss=float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log1p(-p))),
               val_ap=m["ap"], val_acc=m["acc"], val_auc=m["auc"])
    return m
