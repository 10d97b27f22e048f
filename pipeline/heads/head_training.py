"""How a head is trained: its optimiser, learning rate, batch size, epochs, loss, model
selection and stopping rule, as one frozen ``HeadTraining``.

Each method's ``schedule`` makes it (``nsnet.heads.method``): the NS-Net family from
``train.*`` (Adam, the project's loss, the epoch with the best validation AP), the paper
baselines from their official code's settings (``paper_schedule`` over
``nsnet.heads.baselines.SETTINGS``, each value cited), a training-free method with no epoch.
``train.seed`` and ``train.device`` apply to every head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from nsnet.heads.baselines import PaperSettings

SELECTIONS = ("best_val_ap", "best_val_acc", "last")


@dataclass(frozen=True)
class HeadTraining:
    """The training schedule of one head."""

    optimizer: str  # adam | adamw | none (training-free)
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    batch_size: int
    epochs: int
    select: str  # best_val_ap | best_val_acc | last
    plateau: bool  # UniversalFakeDetect's learning-rate drop on a validation-accuracy plateau
    own_loss: bool  # the head's ``loss(out, y)`` (its paper's), else the project's loss
    source: str  # where the values come from: "train.*" or the official code

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        if self.epochs == 0:  # training-free: nothing to optimise
            return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.optimizer]
        return cls(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paper_schedule(s: PaperSettings, select: str = "last", plateau: bool = False) -> HeadTraining:
    """A baseline's schedule as its official code trains it (its own loss)."""
    return HeadTraining(s.optimizer, s.lr, tuple(s.betas), s.weight_decay, s.batch_size,
                        s.epochs, select, plateau, True, "official code (docs/baselines.md)")
