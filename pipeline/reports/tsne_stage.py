"""t-SNE of cached image features before and after the head's semantic projection (Figure 1).

"Before" is the CLIP image feature as the head receives it (L2-normalised when
``train.normalize``); "after" is the head's projected feature ``Px`` (NS-Net: the fixed
caption-subspace null space; Advanced NS-Net: each image's own caption direction removed).
A subsample (``figures.tsne_points``, seeded) keeps t-SNE to seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsnet.config import Params
from nsnet.extraction.cached_features import FeatureSet, load_features
from nsnet.heads.bundle import load_bundle
from nsnet.heads.output import device_of


@torch.no_grad()
def before_after(model: torch.nn.Module, fs: FeatureSet, batch_size: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(head input x, projected Px) for every row, as float32 arrays."""
    model.eval()
    device = device_of(model)
    xs, ps = [], []
    for i in range(0, len(fs), batch_size):
        x = fs.image[i:i + batch_size].to(device).float()
        t = fs.text[i:i + batch_size].to(device).float()
        out = model(x, t)
        xs.append(out.prepared.cpu())
        ps.append(out.projected.cpu())
    return torch.cat(xs).numpy(), torch.cat(ps).numpy()


def subsample(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n, k)`` rows drawn without replacement."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def embed_2d(x: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    if len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 images, got {len(x)}")
    perplexity = min(perplexity, (len(x) - 1) / 3)
    if x.shape[1] > 50 and len(x) > 50:  # the usual PCA step: faster neighbours, same picture
        from sklearn.decomposition import PCA

        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x.astype(np.float64))


def label_separation(x: np.ndarray, labels: np.ndarray) -> float:
    """Cosine silhouette of real vs generated (higher: classes further apart); nan if 1 class."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(silhouette_score(x, labels, metric="cosine"))


def run_tsne(params: Params, manifest: str | Path, features: str | Path,
             model_dir: str | Path, out_png: str | Path) -> dict[str, Any]:
    """Draw the 2 x 2 t-SNE figure; return counts and the label separation before/after."""
    from nsnet.reports.figures import render_tsne

    model, config = load_bundle(model_dir)
    fs = load_features(params, manifest, features,
                       recipe=config.head.recipe)
    keep = np.zeros(len(fs), bool)
    keep[subsample(len(fs), params.figures.tsne_points, params.seed)] = True
    fs = fs.subset(keep).first_views(1)  # one point per image: patch-order view 0
    x, px = before_after(model, fs)
    labels = fs.frame["label"].to_numpy()
    kind = config.head.name
    sep = {"before": label_separation(x, labels), "after": label_separation(px, labels)}
    what = {"composite_probe": "composite probe (no projection)",
            "nsnet": "NS-Net null-space projection",
            "advanced": "Advanced NS-Net per-caption projection"}[kind]
    points = {f"before (CLIP image feature), silhouette {sep['before']:.3f}":
              embed_2d(x, params.figures.tsne_perplexity, params.seed),
              f"after ({kind} projection Px), silhouette {sep['after']:.3f}":
              embed_2d(px, params.figures.tsne_perplexity, params.seed)}
    title = (f"t-SNE of {len(fs)} cached image features before and after the {what}\n"
             "silhouette = cosine silhouette of real vs generated in the full feature space, "
             "from -1 to 1: higher = real and generated further apart (better for detection)")
    render_tsne(points, fs.frame, out_png, title)
    return {"n": len(fs), "head": kind, "silhouette": sep, "out": str(out_png)}
