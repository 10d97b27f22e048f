"""What training learned and on what, as types: ``TrainingInfo`` (from the training loop) and
``TrainingRecord`` (the bundle's ``training`` section: the info plus the params, protocol, rows
and features it was trained with).

Both are validated by ``nsnet.config.build_section`` when a bundle is read, like params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nsnet.config import (
    ProtocolParams,
    TrainParams,
    checked_field,
    to_plain,
)
from nsnet.heads.head_training import HeadTraining
from nsnet.registry import RECIPES


@dataclass(frozen=True)
class ClassCounts:
    """Training rows per class."""

    real: int = checked_field(lo=0)
    fake: int = checked_field(lo=0)


@dataclass(frozen=True, kw_only=True)
class TrainingInfo:
    """What ``training_loop.fit`` reports beside the model: class counts, how many rows per
    image an epoch drew from, the schedule, and what NS-Net's basis or the advanced head's
    fitted map captured (``None`` for the other heads)."""

    class_counts: ClassCounts
    patch_views: int = checked_field(1, lo=1)  # composite recipe: patch orders per image (K)
    crops: int = checked_field(0, lo=0)  # cropped recipes: crops per training image; else 0
    schedule: HeadTraining
    nsnet_k: int | None = checked_field(None, lo=0)  # nsnet: semantic rank removed
    explained_variance: float | None = checked_field(None, nan=True)  # of the captions
    mapper_rows: int | None = checked_field(None, lo=0)  # advanced, regression* mappers
    mapper_r2: float | None = checked_field(None, nan=True)
    # what another method's fit captured (a training-free head's threshold, prompts, ...)
    fitted: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_kwargs(self) -> dict[str, Any]:
        """Its fields, shallow (nested types kept), to extend into a subclass (a record)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class TrainingRecord(TrainingInfo):
    """A bundle's ``training``: the loop's info and what the head was trained with, spelled as
    params.yaml spells it (``train.*`` as ``params``, with ``head`` the head trained; the
    training side of ``protocol.*`` as ``protocol``: its test side is recorded empty)."""

    params: TrainParams
    protocol: ProtocolParams
    recipe: str = checked_field("composite", registry=RECIPES)
    n_train: int = checked_field(lo=0)
    train_sources: tuple[str, ...] = ()
    train_ids: str  # fingerprint of the training rows' ids
    features: str  # fingerprint of the features' provenance
    best_epoch: int = checked_field(lo=0)
    best_val_ap: float = checked_field(nan=True)  # NaN without validation rows
    preset: str | None = None  # protocol.preset, when one set the training sources
    preset_train_sources: tuple[str, ...] = ()
    preset_train_missing: tuple[str, ...] = ()  # the preset's sources not in the data

    def to_json(self) -> dict[str, Any]:
        return to_plain(self)
