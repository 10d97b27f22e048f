"""A frozen caption -> image-semantics map for the Advanced NS-Net head, fit by ridge regression.

``train.mapper: regression`` (and ``regression_real``, ``regression_within``) replace the seed's
learned mapper by an affine map fit once on the training rows before the head trains:
``f = (t - mu_t) W`` predicts how an image feature departs from the mean image given its
caption, so the per-sample projection removes the image's own semantic deviation even when
image and caption embeddings live in different places (CLIP's modality gap). The detection loss
never reaches ``W``, so it cannot learn to keep a semantic shortcut (docs/shortcut.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nsnet.heads.projection import Sliceable

RIDGE = 1e-3  # least ridge strength, relative to the mean caption variance per dimension
# At most this share of the rows' degrees of freedom goes into the map (ridge raised until the
# map's effective parameters, trace of its hat matrix, fit): with fewer rows than dimensions
# a near least-squares map would reproduce each training image from its caption, so the
# projection would strip the training features bare while leaving unseen ones intact.
MAX_DF_SHARE = 0.1


@dataclass
class SemanticMapFit:
    text_mean: torch.Tensor  # (d,) mean caption of the rows
    image_mean: torch.Tensor  # (d,) mean image feature of the rows
    weight: torch.Tensor  # (d, d) the map
    r2: float  # share of the (within-group) image variance the map explains on these rows
    ridge: float = RIDGE  # the ridge used, relative to the mean caption variance per dimension
    df: float = 0.0  # the map's effective number of parameters per output (hat-matrix trace)


class LinearSemanticMap(nn.Module):
    """``f = (t - text_mean) @ weight``, the predicted ``x - image_mean``: frozen buffers (saved
    in bundles), no trainable weight."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("text_mean", torch.zeros(dim))
        self.register_buffer("image_mean", torch.zeros(dim))
        self.register_buffer("weight", torch.zeros(dim, dim))

    @torch.no_grad()
    def set_map(self, fitted: SemanticMapFit) -> None:
        for name in ("text_mean", "image_mean", "weight"):
            value = getattr(fitted, name)
            setattr(self, name, value.to(getattr(self, name).device, torch.float32).contiguous())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.text_mean) @ self.weight


class _Moments:
    """Sums over rows, in float64, for a centred least-squares fit."""

    def __init__(self, d: int, e: int) -> None:
        self.n = 0
        self.t, self.x = torch.zeros(d, dtype=torch.float64), torch.zeros(e, dtype=torch.float64)
        self.tt = torch.zeros(d, d, dtype=torch.float64)
        self.tx = torch.zeros(d, e, dtype=torch.float64)
        self.xx = torch.zeros((), dtype=torch.float64)

    def add(self, t: torch.Tensor, x: torch.Tensor) -> None:
        self.n += len(t)
        self.t += t.sum(0)
        self.x += x.sum(0)
        self.tt += t.T @ t
        self.tx += t.T @ x
        self.xx += (x * x).sum()

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(C_tt, C_tx, total image variance) about these rows' own means."""
        if self.n == 0:
            return torch.zeros_like(self.tt), torch.zeros_like(self.tx), 0.0
        mt, mx = self.t / self.n, self.x / self.n
        return (self.tt - self.n * torch.outer(mt, mt), self.tx - self.n * torch.outer(mt, mx),
                float(self.xx - self.n * (mx * mx).sum()))


def _rows(block: torch.Tensor, normalize: bool) -> torch.Tensor:
    """float64 rows, L2-normalised when the head normalises; K views -> their mean."""
    block = block.to(torch.float64)
    if normalize:
        block = F.normalize(block, dim=-1)
    return block.mean(dim=1) if block.dim() == 3 else block


def fit_semantic_map(text: Sliceable, image: Sliceable, groups: torch.Tensor | None = None,
                     normalize: bool = True, ridge: float = RIDGE, block: int = 65536
                     ) -> SemanticMapFit:
    """Least-squares ``W`` with ``x - mu_x ~ (t - mu_t) W`` over aligned caption/image rows.

    ``text`` (n, d) and ``image`` (n, d) or (n, K, d) (K views are averaged) may be tensors or
    memory-mapped rows: the moments are accumulated in float64 block by block, so memory does
    not grow with n. With ``groups`` (n,) integer labels the fit is *within* groups (each row
    centred on its group's means, one pooled ``W``): what the caption says about the image
    when the group is held fixed, so a caption that predicts the group (a semantic shortcut)
    does not pull the group's feature difference into the map. ``ridge`` adds
    ``ridge * trace(C_tt) / d`` to the caption covariance's diagonal, raised when needed so that
    the map's effective parameters stay within ``MAX_DF_SHARE`` of the rows (well posed, and no
    memorised training images, even for d > n). The returned means are over all rows.
    """
    n, d = len(text), text.shape[-1]
    if n != len(image) or n < 2:
        raise ValueError(f"the semantic map needs >= 2 aligned rows (got {n} captions, "
                         f"{len(image)} images)")
    e = image.shape[-1]
    keys = [0] if groups is None else sorted(int(g) for g in torch.unique(groups))
    moments = {g: _Moments(d, e) for g in keys}
    for i in range(0, n, block):
        t, x = _rows(text[i:i + block], normalize), _rows(image[i:i + block], normalize)
        if groups is None:
            moments[0].add(t, x)
            continue
        g = groups[i:i + block]
        for key in keys:
            pick = g == key
            if bool(pick.any()):
                moments[key].add(t[pick], x[pick])
    c_tt = torch.zeros(d, d, dtype=torch.float64)
    c_tx = torch.zeros(d, e, dtype=torch.float64)
    total = 0.0
    for m in moments.values():
        a, b, v = m.centred()
        c_tt, c_tx, total = c_tt + a, c_tx + b, total + v
    evals, evecs = torch.linalg.eigh(c_tt)
    evals = evals.clamp_min(0.0)
    scale = float(evals.sum()) / d or 1.0
    n_free = n - len(keys)  # rows left after centring on each group's means
    rel = _ridge_for(evals / scale, ridge, max(MAX_DF_SHARE * n_free, 1.0))
    lam = rel * scale
    weight = evecs @ ((evecs.T @ c_tx) / (evals + lam)[:, None])
    # R^2 = 1 - SSE / SST, SSE = SST - 2 tr(W^T C_tx) + tr(W^T C_tt W)
    explained = 2 * float((weight * c_tx).sum()) - float((weight * (c_tt @ weight)).sum())
    count = sum(m.n for m in moments.values())
    mu_t = sum(m.t for m in moments.values()) / count
    mu_x = sum(m.x for m in moments.values()) / count
    return SemanticMapFit(mu_t.float(), mu_x.float(), weight.float(),
                          explained / total if total > 0 else 0.0, rel,
                          float((evals / (evals + lam)).sum()))


def _ridge_for(evals: torch.Tensor, least: float, max_df: float) -> float:
    """The smallest ridge >= ``least`` whose degrees of freedom ``sum(e / (e + ridge))`` are at
    most ``max_df`` (bisection in log space; ``evals`` scaled to mean 1)."""

    def df(r: float) -> float:
        return float((evals / (evals + r)).sum())

    if df(least) <= max_df:
        return least
    lo, hi = least, max(least, 1.0)
    while df(hi) > max_df and hi < 1e15:
        lo, hi = hi, hi * 10.0
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if df(mid) > max_df else (lo, mid)
    return hi
