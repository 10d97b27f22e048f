"""A detection method (a "head") as one object: everything the house needs to know about it.

Each method lives in its own module under ``nsnet.heads.methods`` (the module name is the head
name, ``train.head``/``compare.heads``) and registers one ``Method`` in ``nsnet.registry.METHODS``.
The experiment loop, the training loop, the bundles, predict, explain, serve and the tables read
these fields and never branch on a head's name:

* what it reads: ``recipe`` (a ``nsnet.registry.RECIPES`` name) and ``captions`` (the caption
  embedding at inference: BLIP runs for the new images);
* how it is built: ``build(dim, **hparams)`` and ``shape(fs)`` (its input width and any extra
  constructor argument the features decide, e.g. RINE's number of blocks);
* how it trains: ``schedule(train_params)`` (optimiser, epochs, selection rule, whose loss),
  ``loss`` (the project's loss, for heads without their own ``model.loss``) and ``prepare``
  (any fit before training: NS-Net's null space, the advanced head's frozen map, a training-free
  method's whole fit);
* its paper: ``published`` (the method's name in the presets' published tables) and
  ``old_names`` (names bundles and params may still use).

Adding a detector is one module in ``pipeline/heads/methods/`` (plus its params.yaml defaults
under ``methods.<name>`` when it has settings): docs/heads.md, "Adding a detector".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from nsnet.config import Params, TrainParams, build_section
from nsnet.heads.head_training import HeadTraining
from nsnet.heads.losses import bce_loss, supcon_loss
from nsnet.registry import METHODS

if TYPE_CHECKING:
    from nsnet.extraction.cached_features import FeatureSet


def project_loss(out: Any, y: torch.Tensor, x: torch.Tensor, tp: TrainParams,
                 pos_weight: torch.Tensor | None) -> torch.Tensor:
    """NS-Net's loss: ``(1 - bce_weight) SupCon + bce_weight BCE`` (train.*)."""
    return (1 - tp.bce_weight) * supcon_loss(out.embedding, y, tp.temperature) \
        + tp.bce_weight * bce_loss(out.logit, y, pos_weight)


def feature_width(fs: FeatureSet) -> tuple[int, dict[str, int]]:
    """The usual ``shape``: one feature vector per row."""
    return fs.dim, {}


def project_schedule(tp: TrainParams) -> HeadTraining:
    """Adam with ``train.lr``, ``train.batch_size``, ``train.epochs``; the best val AP."""
    return HeadTraining("adam", tp.lr, (0.9, 0.999), tp.weight_decay, tp.batch_size, tp.epochs,
                        "best_val_ap", False, False, "train.*")


TRAINING_FREE = "training-free"  # the schedule's ``source`` of a training-free method


def training_free(tp: TrainParams) -> HeadTraining:
    """No gradient step: ``prepare`` is the whole fit (``epochs`` 0)."""
    return HeadTraining("none", 0.0, (0.9, 0.999), 0.0, tp.batch_size, 0, "last", False, True,
                        TRAINING_FREE)


def is_training_free(record: dict[str, Any]) -> bool:
    """Whether a training record (a bundle's ``training``, as JSON) is a training-free fit."""
    return (record.get("schedule") or {}).get("source") == TRAINING_FREE


@dataclass
class FitInputs:
    """What ``Method.prepare`` may read: the training and validation rows and the params."""

    train: FeatureSet
    val: FeatureSet | None
    params: Params


Prepare = Callable[[torch.nn.Module, FitInputs], dict[str, Any]]


@dataclass(frozen=True)
class Method:
    """One detector (see the module docstring). ``settings`` is the dataclass of its own
    ``methods.<name>`` params section (validated by ``settings_of``)."""

    name: str
    build: Callable[..., torch.nn.Module]
    recipe: str
    title: str  # one line for docs and help: the paper and what the head does
    captions: bool = False
    shape: Callable[[FeatureSet], tuple[int, dict[str, int]]] = feature_width
    schedule: Callable[[TrainParams], HeadTraining] = project_schedule
    loss: Callable[..., torch.Tensor] = project_loss
    prepare: Prepare | None = None
    published: str = ""  # its name in nsnet.data.presets' published tables ("" = none)
    settings: type | None = None
    old_names: tuple[str, ...] = ()
    renamed_why: str = ""

    @property
    def training_free(self) -> bool:
        return self.schedule is training_free

    def settings_of(self, params: Params) -> Any:
        """This method's ``methods.<name>`` section as its typed settings (defaults when the
        section is absent); a bad key or value raises ParamsError naming it."""
        if self.settings is None:
            return None
        return build_section(self.settings, params.methods.get(self.name, {}),
                             f"methods.{self.name}.")


def register(method: Method) -> Method:
    """Register ``method`` under its name (the name of the module that calls this)."""
    return METHODS.register(method.name, method, method.old_names, method.renamed_why)


def method(name: str) -> Method:
    """The registered method called ``name`` (``UnknownName`` lists them; an old name of a
    bundle is resolved when the bundle is read, ``METHODS.current``)."""
    return METHODS.get(name)


def build_head(kind: str, dim: int, **hparams: object) -> torch.nn.Module:
    """A fresh detection head over ``dim``-d features.

    Args:
        kind: a registered head (``nsnet.registry.METHODS``: ``composite_probe``, ``nsnet``,
            ``advanced``, ``univfd``, ``rine``, ``cozzolino``, ``clip_zero_shot``, ``rigid``).
        dim: feature width (768 for ViT-L-14).
        **hparams: the head's hyper-parameters (``hidden_dim``, ``proj_dim``, ``dropout``,
            ``normalize``, ``nsnet_k`` for nsnet, ``mapper`` for advanced); heads ignore those
            they do not use.

    Raises:
        UnknownName: unknown ``kind`` (the message lists the heads).

    Example::

        head = build_head("advanced", 768, hidden_dim=512, proj_dim=128)
        out = head(image_features, text_features)  # out.logit (fake > 0)
    """
    return method(kind).build(dim, **hparams)
