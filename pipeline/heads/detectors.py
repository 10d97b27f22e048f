"""The detectors of the patch-composite cache, functions of cached (image, caption) embeddings.

* ``CompositeProbe`` linear probe on the raw (unnormalised) embedding of OUR patch composite
                     (not UniversalFakeDetect, which probes the center crop: ``univfd``)
* ``NSNet``          fixed null-space projection ``P = I - V_k V_k^T`` from the training
                     captions, then an MLP head (Yan et al. 2025)
* ``AdvancedNSNet``  learned semantic mapper ``f = LayerNorm(t + MLP(t))`` and per-sample
                     projection ``x - (x.f)/(f.f) f``, then the same MLP head (the seed);
                     ``mapper`` picks how ``f`` is made (``nsnet.heads.mappers``,
                     docs/shortcut.md)

Each ``forward(x, t)`` returns a ``HeadOutput`` with the logit (fake = positive), the
contrastive embedding and, for the advanced head, the mapped semantic direction. The baseline
heads of other papers (``univfd``, ``rine``, ``cozzolino``) live in ``baselines.py``; each head
is registered with how it trains by its module in ``nsnet.heads.methods``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nsnet.heads.output import HeadOutput
from nsnet.heads.projection import project_out_direction, project_out_subspace
from nsnet.heads.semantic_map import LinearSemanticMap
from nsnet.registry import MAPPERS


class ArtifactHead(nn.Module):
    """MLP over the projected feature: a logit for BCE and an embedding for SupCon."""

    def __init__(self, dim: int, hidden: int, proj_dim: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, hidden), nn.GELU())
        self.classifier = nn.Linear(hidden, 1)
        self.contrast = nn.Linear(hidden, proj_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.classifier(h).squeeze(-1), self.contrast(h)


class _Base(nn.Module):
    kind = "base"

    def __init__(self, dim: int, normalize: bool) -> None:
        super().__init__()
        self.dim = dim
        self.normalize = normalize

    def prepare(self, v: torch.Tensor) -> torch.Tensor:
        """A feature as the head reads it: float32, unit-norm when the head normalises (what
        ``HeadOutput.prepared`` holds for the image feature)."""
        v = v.float()
        return F.normalize(v, dim=-1) if self.normalize else v


class CompositeProbe(_Base):
    """Linear probe (BCE) on the raw CLIP embedding of our patch composite: UniversalFakeDetect's
    classifier on another input, so not UniversalFakeDetect (``univfd`` is). ``normalize`` is
    ignored: on unit-norm features, whose directions differ little, a linear probe barely moves.
    Called ``ufd`` before; bundles saved under that name load as this head."""

    kind = "composite_probe"

    def __init__(self, dim: int, **_: object) -> None:
        super().__init__(dim, normalize=False)
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        x = self.prepare(x)
        return HeadOutput(self.linear(x).squeeze(-1), None, x, prepared=x)


class NSNet(_Base):
    kind = "nsnet"

    def __init__(self, dim: int, hidden_dim: int = 512, proj_dim: int = 128, dropout: float = 0.1,
                 nsnet_k: int = 32, normalize: bool = True, **_: object) -> None:
        super().__init__(dim, normalize)
        self.register_buffer("basis", torch.zeros(dim, min(nsnet_k, dim)))
        self.head = ArtifactHead(dim, hidden_dim, proj_dim, dropout)

    @torch.no_grad()
    def set_basis(self, basis: torch.Tensor) -> None:
        self.basis = basis.to(self.basis.device, torch.float32).contiguous()

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        x = self.prepare(x)
        xp = project_out_subspace(x, self.basis)
        logit, emb = self.head(xp)
        return HeadOutput(logit, emb, xp, prepared=x)


class SemanticMapper(nn.Module):
    """``f = LayerNorm(t + MLP(t))``; the MLP's last layer starts at zero, so f starts as
    LayerNorm(t), i.e. (up to normalisation) the identity map on the caption embedding."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.norm = nn.LayerNorm(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.norm(t + self.mlp(t))


class AdvancedNSNet(_Base):
    """Per-sample projection ``x - (x.f)/(f.f) f`` of the image feature, with ``f`` made from the
    caption embedding as ``mapper`` says (``nsnet.heads.mappers``), then the artifact head."""

    kind = "advanced"

    def __init__(self, dim: int, hidden_dim: int = 512, proj_dim: int = 128, dropout: float = 0.1,
                 normalize: bool = True, mapper: str = "end_to_end", **_: object) -> None:
        super().__init__(dim, normalize)
        kind = MAPPERS.get(mapper)  # UnknownName lists the mappers
        self.mapper_kind, self.detached = mapper, kind.trained and not kind.trains_image_loss
        if kind.trained:
            self.mapper: nn.Module | None = SemanticMapper(dim, hidden_dim)
        elif kind.fitted:
            self.mapper = LinearSemanticMap(dim)
        else:
            self.mapper = None
        self.head = ArtifactHead(dim, hidden_dim, proj_dim, dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> HeadOutput:
        if t is None:
            raise ValueError("the advanced head needs the caption embedding t")
        x = self.prepare(x)
        f = self.prepare(t) if self.mapper is None else self.mapper(self.prepare(t))
        if isinstance(self.mapper, LinearSemanticMap):  # the deviation from the mean image
            mean = self.mapper.image_mean  # along f is removed: f predicts that deviation
            xp = project_out_direction(x - mean, f) + mean
        else:
            xp = project_out_direction(x, f.detach() if self.detached else f)
        logit, emb = self.head(xp)
        return HeadOutput(logit, emb, xp, f, prepared=x)


# train.* keys a head is built from (stored in a bundle's head.hparams)
HPARAM_KEYS = ("hidden_dim", "proj_dim", "dropout", "nsnet_k", "normalize", "mapper")
