"""Baseline heads, each as its official code trains it on a frozen backbone's cached input.

* ``UnivFD``     UniversalFakeDetect (Ojha et al., CVPR 2023): one linear layer on CLIP
                 ViT-L/14's final image embedding of the center crop (recipe ``clip_crop``).
* ``RINE``       Koutlis & Papadopoulos (ECCV 2024): per-block projection of the class tokens
                 of every transformer block, a Trainable Importance Estimator over blocks, a
                 second projection and a 3-layer head (recipe ``clip_layers``); BCE (summed) +
                 a weighted supervised contrastive term.
* ``Cozzolino``  Cozzolino et al. (CVPRW 2024): a linear classifier on the L2-normalised
                 pre-projection feature of OpenCLIP ViT-L/14 CommonPool-XL (recipe
                 ``cozzolino``); the paper's classifier is a linear SVM (hinge loss here).

Each head has ``forward(x, t=None) -> HeadOutput`` (``t``, a caption embedding, is ignored),
``loss(out, y)`` (the paper's loss) and a ``PaperSettings`` (``SETTINGS[kind]``) whose every
value cites the official file it comes from. docs/baselines.md has the line-level citations.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nsnet.heads.output import HeadOutput

__all__ = ["RINE", "SETTINGS", "Cozzolino", "PaperSettings", "Plateau", "UnivFD", "make_optimizer",
           "rine_supcon"]

UFD = "WisconsinAIVision/UniversalFakeDetect@76a0e3e"
RINE_REPO = "mever-team/rine@9b7fd58"
GRIP = "grip-unina/ClipBased-SyntheticImageDetection@c76ef7f"


@dataclass(frozen=True)
class PaperSettings:
    """How the official code trains a head; ``sources`` cites each value (field -> file)."""

    optimizer: str  # "adamw" | "adam"
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    batch_size: int
    epochs: int  # the most epochs (an early-stopping rule may end sooner)
    early_stopping: str  # the rule, in words ("none": train all epochs, keep the last)
    threshold: float  # on sigmoid(logit): fake when >= threshold
    train_crops: int  # training-augmentation crops to cache per image (crop 0 is the test crop)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", types.MappingProxyType(dict(self.sources)))


def make_optimizer(settings: PaperSettings, params) -> torch.optim.Optimizer:
    """The paper's optimiser over ``params`` (AdamW for UniversalFakeDetect, Adam otherwise)."""
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[settings.optimizer]
    return cls(params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)


class Plateau:
    """UniversalFakeDetect's stopping rule (``train.py`` with CNNDetection's ``earlystop.py``):
    after each epoch's validation accuracy, an epoch that does not beat the best by more than
    ``min_delta`` counts; after ``patience`` such epochs the learning rate drops tenfold and the
    count restarts with ``min_delta_after_drop``; training stops once the rate would fall below
    ``min_lr``. ``step(acc)`` returns ``"continue"``, ``"drop_lr"`` or ``"stop"``."""

    def __init__(self, lr: float, patience: int = 5, min_delta: float = 0.001,
                 min_delta_after_drop: float = 0.002, factor: float = 0.1,
                 min_lr: float = 1e-6) -> None:
        self.lr, self.patience, self.min_delta = lr, patience, min_delta
        self.min_delta_after_drop, self.factor, self.min_lr = min_delta_after_drop, factor, min_lr
        self.best: float | None = None
        self.count = 0

    def step(self, score: float) -> str:
        if self.best is None or score >= self.best + self.min_delta:
            self.best, self.count = score, 0
            return "continue"
        self.count += 1
        if self.count < self.patience:
            return "continue"
        self.lr *= self.factor
        if self.lr < self.min_lr:
            return "stop"
        self.best, self.count, self.min_delta = None, 0, self.min_delta_after_drop
        return "drop_lr"


def _labels(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1).float()


class UnivFD(nn.Module):
    """``CLIPModel.fc``: ``nn.Linear(768, 1)`` on the raw (unnormalised) embedding; weight
    initialised N(0, 0.02) (``networks/trainer.py``, ``init_gain``), bias PyTorch's default."""

    kind = "univfd"

    def __init__(self, dim: int = 768, **_: object) -> None:
        super().__init__()
        self.dim = dim
        self.fc = nn.Linear(dim, 1)
        nn.init.normal_(self.fc.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        x = x.float()
        return HeadOutput(self.fc(x).squeeze(-1), None, x, prepared=x)

    def loss(self, out: HeadOutput, y: torch.Tensor) -> torch.Tensor:
        """``nn.BCEWithLogitsLoss()`` (mean over the batch)."""
        return F.binary_cross_entropy_with_logits(out.logit, _labels(y))


def _projection(d_in: int, width: int, n_proj: int, p_drop: float) -> nn.Sequential:
    """Dropout, then ``n_proj`` x (Linear, ReLU, Dropout): RINE's ``proj1`` / ``proj2``."""
    layers: list[nn.Module] = [nn.Dropout(p_drop)]
    for i in range(n_proj):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU(), nn.Dropout(p_drop)]
    return nn.Sequential(*layers)


def rine_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                base_temperature: float = 0.07) -> torch.Tensor:
    """RINE's ``SupConLoss`` (Khosla et al. 2020, ``L_out``) for one view of (B, P) unit
    vectors: an anchor without a positive adds 0 to the mean (it is not dropped, unlike
    ``nsnet.heads.losses.supcon_loss``); the loss is scaled by temperature/base_temperature."""
    b = features.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=features.device)
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    labels = labels.reshape(-1)
    pos = ((labels[:, None] == labels[None, :]) & ~eye).float()
    exp = torch.exp(logits) * (~eye).float()
    log_prob = logits - torch.log(exp.sum(1, keepdim=True))
    n_pos = pos.sum(1)
    n_pos = torch.where(n_pos < 1e-6, torch.ones_like(n_pos), n_pos)
    mean_log_prob_pos = (pos * log_prob).sum(1) / n_pos
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


class RINE(nn.Module):
    """RINE (``src/models.py`` ``Model``) on (B, L, D) class tokens, one per transformer block.

    ``g = proj1(x)`` (shared over blocks), ``z = proj2(sum_l softmax_l(alpha)[l] * g[:, l])``
    with ``alpha`` (1, L, width) ~ N(0, 1) the Trainable Importance Estimator (a softmax over
    blocks per feature), ``logit = head(z)``; ``z`` is the contrastive embedding. Defaults are
    the released 4-class checkpoint (``n_proj`` 2, ``width`` 1024, ``factor`` 0.2; dropout
    ``nn.Dropout()`` = 0.5). Generic ``train.*`` hyper-parameters are ignored: the paper fixes
    them.
    """

    kind = "rine"

    def __init__(self, dim: int = 1024, n_layers: int = 24, n_proj: int = 2, width: int = 1024,
                 factor: float = 0.2, p_drop: float = 0.5, **_: object) -> None:
        super().__init__()
        self.dim, self.n_layers, self.factor = dim, n_layers, factor
        self.alpha = nn.Parameter(torch.randn(1, n_layers, width))
        self.proj1 = _projection(dim, width, n_proj, p_drop)
        self.proj2 = _projection(width, width, n_proj, p_drop)
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(p_drop),
                                  nn.Linear(width, width), nn.ReLU(), nn.Dropout(p_drop),
                                  nn.Linear(width, 1))

    def importance(self) -> torch.Tensor:
        """(L, width) the TIE's weights: per feature, a distribution over blocks."""
        return torch.softmax(self.alpha, dim=1)[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        if x.dim() == 2 and x.shape[1] == self.n_layers * self.dim:  # the store's flat rows
            x = x.reshape(len(x), self.n_layers, self.dim)
        if x.dim() != 3 or tuple(x.shape[1:]) != (self.n_layers, self.dim):
            raise ValueError(f"the rine head reads (B, {self.n_layers}, {self.dim}) class tokens "
                             f"(recipe clip_layers), got {tuple(x.shape)}")
        g = self.proj1(x.float())
        z = self.proj2((torch.softmax(self.alpha, dim=1) * g).sum(dim=1))
        return HeadOutput(self.head(z).squeeze(-1), z, z, prepared=z)  # nothing removed

    def loss(self, out: HeadOutput, y: torch.Tensor) -> torch.Tensor:
        """``BCEWithLogitsLoss(reduction="sum")`` + ``factor`` x SupCon of the normalised ``z``
        (``src/utils.py`` ``train_one_experiment``)."""
        y = _labels(y)
        bce = F.binary_cross_entropy_with_logits(out.logit, y, reduction="sum")
        return bce + self.factor * rine_supcon(F.normalize(out.embedding, dim=1), y)


class Cozzolino(nn.Module):
    """``OpenClipLinear.fc``: a linear layer (``ChannelLinear(1024, 1)``, weight N(0, 0.02)) on
    the L2-normalised pre-projection feature (normalised again here: a no-op on the recipe).
    Its logit is the released model's LLR: > 0 = synthetic."""

    kind = "cozzolino"

    def __init__(self, dim: int = 1024, **_: object) -> None:
        super().__init__()
        self.dim = dim
        self.fc = nn.Linear(dim, 1)
        nn.init.normal_(self.fc.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        x = F.normalize(x.float(), dim=-1)
        return HeadOutput(self.fc(x).squeeze(-1), None, x, prepared=x)

    def loss(self, out: HeadOutput, y: torch.Tensor) -> torch.Tensor:
        """Linear SVM (the paper): mean hinge ``max(0, 1 - s f(x))`` with s = +1 fake, -1 real;
        its L2 term is the optimiser's weight decay (``SETTINGS['cozzolino'].weight_decay``)."""
        s = 2.0 * _labels(y) - 1.0
        return torch.clamp(1.0 - s * out.logit, min=0.0).mean()


SETTINGS: dict[str, PaperSettings] = {
    "univfd": PaperSettings(
        optimizer="adamw", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0,
        batch_size=256, epochs=100,
        early_stopping="Plateau on validation accuracy: patience 5 epochs, min gain 0.001 "
                       "(0.002 after a drop), lr / 10 at each plateau, stop below 1e-6",
        threshold=0.5, train_crops=8,
        sources={
            "optimizer": f"{UFD} networks/trainer.py:33-34 (--optim adam -> torch.optim.AdamW)",
            "lr": f"{UFD} options/train_options.py:19 (--lr 0.0001)",
            "betas": f"{UFD} options/train_options.py:18 (--beta1 0.9), trainer.py:34 (0.999)",
            "weight_decay": f"{UFD} options/base_options.py:30 (--weight_decay 0.0)",
            "batch_size": f"{UFD} options/base_options.py:33 (--batch_size 256)",
            "epochs": f"{UFD} options/train_options.py:17 (--niter 100)",
            "early_stopping": f"{UFD} train.py:44,75-83 + options/train_options.py:7 "
                              "(--earlystop_epoch 5), trainer.py:45-50 (lr /= 10, min 1e-6)",
            "threshold": f"{UFD} validate.py:118-119 (acc at 0.5; README: acc with 0.5)",
            "train_crops": "ours: the official loader draws a fresh augmentation every epoch "
                           "(data/datasets.py:86-115); 8 cached views approximate that",
        }),
    "rine": PaperSettings(
        optimizer="adam", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0,
        batch_size=128, epochs=1,
        early_stopping="none (lr / 10 at epochs 6 and 11, unused with 1 epoch)",
        threshold=0.5, train_crops=1,
        sources={
            "optimizer": f"{RINE_REPO} src/utils.py:175 (torch.optim.Adam, default betas, "
                         "no weight decay)",
            "lr": f"{RINE_REPO} scripts/experiments.py:17 (lrs = [1e-3])",
            "betas": f"{RINE_REPO} src/utils.py:175 (Adam defaults)",
            "weight_decay": f"{RINE_REPO} src/utils.py:175 (Adam defaults)",
            "batch_size": f"{RINE_REPO} scripts/experiments.py:16 (batch_sizes = [128])",
            "epochs": f"{RINE_REPO} scripts/experiments.py:5 (epochss = [1]); scripts/best.py "
                      "retrains the best grid config (results/grid/*_1.pickle) for 1 epoch",
            "early_stopping": f"{RINE_REPO} scripts/best.py:7 (epochs_reduce_lr = [6, 11]), "
                              "src/utils.py:186-189; validation is logged, never selects",
            "threshold": f"{RINE_REPO} src/utils.py:272 (accuracy at sigmoid > 0.5)",
            "train_crops": "ours: one epoch sees one augmentation per image "
                           "(src/utils.py:26-38)",
        }),
    "cozzolino": PaperSettings(
        optimizer="adam", lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4,
        batch_size=256, epochs=100, early_stopping="none: train all epochs, keep the last",
        threshold=0.5, train_crops=0,
        sources={
            "optimizer": f"ours: {GRIP} releases weights and test code only (no training code); "
                         "the paper's classifier is a linear SVM, solver not published",
            "lr": "ours (no training code released)",
            "betas": "ours (no training code released)",
            "weight_decay": "ours: the SVM's L2 term (its C is not published)",
            "batch_size": "ours (no training code released)",
            "epochs": "ours (no training code released)",
            "early_stopping": "ours (no training code released)",
            "threshold": f"{GRIP} README.md:42-43 (LLR > 0 = synthetic, i.e. sigmoid >= 0.5)",
            "train_crops": f"{GRIP} main.py:59-62 (one deterministic resize + center crop; no "
                           "augmentation is documented)",
        }),
}
