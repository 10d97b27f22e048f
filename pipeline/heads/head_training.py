"""How each head is trained: the NS-Net family from ``train.*``, the baselines as their papers.

``HeadTraining.of(kind, train_params)`` is the one place that decides a head's optimiser,
learning rate, batch size, epochs, loss, model selection and stopping rule:

* ``composite_probe``, ``nsnet``, ``advanced``: Adam with ``train.lr``, ``train.batch_size``,
  ``train.epochs``, the project's loss (``training_loop.head_loss``), the epoch with the best
  validation AP;
* ``univfd``, ``rine``, ``cozzolino``: their official code's settings
  (``nsnet.heads.baselines.SETTINGS``, each value cited), their own ``loss``, and their
  selection: UniversalFakeDetect keeps its best validation accuracy and divides the learning
  rate by ten on a plateau (stopping below 1e-6); RINE and Cozzolino et al. keep the last epoch.

``train.seed`` and ``train.device`` apply to every head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from nsnet.config import TrainParams
from nsnet.heads.baselines import SETTINGS

SELECTIONS = ("best_val_ap", "best_val_acc", "last")


@dataclass(frozen=True)
class HeadTraining:
    """The training schedule of one head."""

    optimizer: str  # adam | adamw
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    batch_size: int
    epochs: int
    select: str  # best_val_ap | best_val_acc | last
    plateau: bool  # UniversalFakeDetect's learning-rate drop on a validation-accuracy plateau
    own_loss: bool  # the head's ``loss(out, y)`` (its paper's), else the project's loss
    source: str  # where the values come from: "train.*" or the official code

    @classmethod
    def of(cls, kind: str, tp: TrainParams) -> HeadTraining:
        if kind not in SETTINGS:
            return cls("adam", tp.lr, (0.9, 0.999), tp.weight_decay, tp.batch_size, tp.epochs,
                       "best_val_ap", False, False, "train.*")
        s = SETTINGS[kind]
        select = "best_val_acc" if kind == "univfd" else "last"
        return cls(s.optimizer, s.lr, tuple(s.betas), s.weight_decay, s.batch_size, s.epochs,
                   select, kind == "univfd", True, "official code (docs/baselines.md)")

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.optimizer]
        return cls(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
