"""Why the detector decided: occlusion attribution over the 49 selected patches.

Each grid tile of the composite is replaced in turn by the composite's mean colour; CLIP and the
head are re-run, and the tile's contribution is ``logit(original) - logit(occluded)``: positive
tiles pushed the decision toward "generated", negative ones toward "real". The caption (of the
whole image) is left as it is, so only the pixel evidence is attributed. The report also says
how much of the image feature the head removed as semantic content, ``||x - Px|| / ||x||``.
With K patch-order views a patch is occluded in every view's composite (wherever that view
placed it) and the logits are combined as in ``nsnet predict``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nsnet.data.images import ImageError, ImageInfo, decode_file, display_path
from nsnet.data.manifest import content_id
from nsnet.extraction.patch_selection import (
    LUMA,
    PatchSpec,
    composite,
    view_cells,
    view_orders,
)
from nsnet.heads.training_loop import combine_views
from nsnet.inference.predict import (
    Chain,
    Features,
    as_cached,
    compute_features,
    first_view,
    head_logits,
    semantic_shares,
)
from nsnet.inference.verdict import verdict
from nsnet.registry import RECIPES
from nsnet.reports.explanation import Explanation, PatchReport


def occlude(composite: np.ndarray, tiles: np.ndarray | list[int], spec: PatchSpec,
            fill: np.ndarray | None = None) -> np.ndarray:
    """Copy of the composite with the given grid tiles painted with ``fill`` (default: mean)."""
    out = composite.copy()
    colour = composite.reshape(-1, 3).mean(0) if fill is None else fill
    s, g = spec.size, spec.grid
    for t in np.asarray(tiles, dtype=int).reshape(-1):
        r, c = divmod(int(t), g)
        out[r * s:(r + 1) * s, c * s:(c + 1) * s] = np.round(colour).astype(np.uint8)
    return out


def score_composites(chain: Chain, composites: np.ndarray, text: torch.Tensor,
                     batch_size: int = 64) -> np.ndarray:
    """Head logits of (B, S, S, 3) composites that all share one caption embedding (1, d)."""
    out = []
    for i in range(0, len(composites), batch_size):
        image = as_cached(chain.clip.encode_images(composites[i:i + batch_size], chain.amp))
        out.append(head_logits(chain, image, text.expand(len(image), -1)))
    return torch.cat(out).numpy()


def semantic_removed(chain: Chain, image: torch.Tensor, text: torch.Tensor) -> float:
    """``||x - Px|| / ||x||`` for the feature the head sees (0 for the UFD probe)."""
    return float(semantic_shares(chain, image, text)[0])


# A patch whose luma varies less than this (standard deviation, of 255) is flat: a uniform
# colour such as a black border, where occluding it cannot change anything.
FLAT_STD = 2.0


def patch_contrast(rgb: np.ndarray, cells: np.ndarray, size: int) -> np.ndarray:
    """Standard deviation of the luma of each selected patch (cells in patch units)."""
    luma = rgb.astype(np.float32) @ np.asarray(LUMA, np.float32)
    return np.array([float(luma[r * size:(r + 1) * size, c * size:(c + 1) * size].std())
                     for r, c in np.asarray(cells, dtype=int)])


def content_warning(contrast: np.ndarray, what: str = "selected patches") -> str:
    """A warning when every patch the head saw is flat (its input held no content), else ""."""
    if len(contrast) and bool((contrast < FLAT_STD).all()):
        return (f"all {len(contrast)} {what} are flat (luma std < {FLAT_STD:g} of 255, e.g. "
                "a uniform border): the head's input held none of the image's content, so the "
                "verdict and the contributions say little about it; crop the border and "
                "explain again")
    return ""


def _bands(entropy: np.ndarray, n_low: int) -> list[str]:
    rank = np.argsort(np.argsort(entropy, kind="stable"), kind="stable")
    return ["low" if r < n_low else "high" for r in rank]


def read_image(path: str | Path, max_pixels: int = 178_956_970
               ) -> tuple[str, np.ndarray, ImageInfo]:
    """(content id, RGB pixels, info) of one file, or ``ImageError`` naming the file.

    ``nsnet explain`` calls it before loading any model, so a bad file is reported at once.
    """
    try:
        data, rgb, info = decode_file(path, max_pixels)
    except ImageError as exc:
        raise ImageError(exc.reason, f"{display_path(path)}: {exc.detail}") from exc
    return content_id(data), rgb, info


def explain_image(chain: Chain, path: str | Path, max_pixels: int = 178_956_970,
                  image: tuple[str, np.ndarray, ImageInfo] | None = None) -> Explanation:
    """Probability, caption, semantic share and per-patch occlusion attribution of one image."""
    image_id, rgb, _ = image or read_image(path, max_pixels)  # ``image``: read_image's result
    return explain_array(chain, rgb, image_id, display_path(path))


def explain_array(chain: Chain, rgb: np.ndarray, image_id: str, name: str) -> Explanation:
    """``explain_image`` of a decoded (H, W, 3) uint8 image whose content id is ``image_id``."""
    if not RECIPES.get(chain.recipe).patch_orders:
        return _explain_crop(chain, rgb, image_id, name)
    height, width = rgb.shape[:2]
    if min(width, height) < chain.spec.size:
        raise ImageError("too_small", f"{name}: {width}x{height} is smaller than one "
                                      f"{chain.spec.size}px patch")
    feats = compute_features(chain, [rgb], [image_id])
    sel = feats.selections[0]
    if chain.views == 1:
        base = float(head_logits(chain, feats.image, feats.text)[0])
        occluded = np.stack([occlude(sel.composite, [k], chain.spec)
                             for k in range(chain.spec.count)])
        logits = score_composites(chain, occluded, feats.text)
    else:
        base, logits = _view_attribution(chain, rgb, image_id, sel.cells, feats)
    prob = float(chain.prob(np.array([base]))[0])  # calibrated, as predict and evaluate
    probs = chain.prob(logits)
    bands = _bands(sel.entropy, chain.spec.n_low)
    contrast = patch_contrast(rgb, sel.cells, chain.spec.size)
    patches = [PatchReport(k, int(sel.cells[k, 0]) * chain.spec.size,
                           int(sel.cells[k, 1]) * chain.spec.size, float(sel.entropy[k]),
                           bands[k], float(base - logits[k]), float(prob - probs[k]),
                           float(contrast[k]))
               for k in range(chain.spec.count)]
    return Explanation(name, image_id, width, height, float(prob),
                       verdict(prob, chain.threshold, chain.band), chain.threshold, base,
                       feats.captions[0], chain.kind,
                       semantic_removed(chain, first_view(feats.image), feats.text), patches,
                       sel.composite, rgb, chain.spec, chain.band, content_warning(contrast))


CROP_GRID = PatchSpec(32, 24, 25)  # a baseline's 224 px crop as 7 x 7 tiles of 32 px


def _explain_crop(chain: Chain, rgb: np.ndarray, image_id: str, name: str) -> Explanation:
    """Occlusion over the 7 x 7 tiles of the crop a crop recipe's head reads (its test-time
    input, ``Recipe.test_pixels``: the center crop, or a resized one): the same attribution, on
    that head's input."""
    from nsnet.extraction.patch_selection import patch_entropies, to_gray

    crop = RECIPES.get(chain.recipe).test_pixels(rgb)
    spec = CROP_GRID
    feats = compute_features(chain, [crop], [image_id])
    base = float(head_logits(chain, feats.image, feats.text)[0])
    occluded = [occlude(crop, [k], spec) for k in range(spec.count)]
    chunks = [occluded[i:i + 16] for i in range(0, len(occluded), 16)]
    logits = np.concatenate([
        head_logits(chain, compute_features(chain, c, [image_id] * len(c)).image,
                    torch.zeros((len(c), 0))).numpy() for c in chunks])
    prob = float(chain.prob(np.array([base]))[0])
    probs = chain.prob(logits)
    entropy = patch_entropies(to_gray(torch.from_numpy(crop)), spec.size).reshape(-1).numpy()
    bands = _bands(entropy, spec.count // 2)
    cells = np.array([(k // spec.grid, k % spec.grid) for k in range(spec.count)])
    contrast = patch_contrast(crop, cells, spec.size)
    patches = [PatchReport(k, (k // spec.grid) * spec.size, (k % spec.grid) * spec.size,
                           float(entropy[k]), bands[k], float(base - logits[k]),
                           float(prob - probs[k]), float(contrast[k]))
               for k in range(spec.count)]
    height, width = rgb.shape[:2]
    return Explanation(name, image_id, width, height, prob,
                       verdict(prob, chain.threshold, chain.band), chain.threshold, base, "",
                       chain.kind, semantic_removed(chain, feats.image, feats.text), patches,
                       crop, crop, spec, chain.band, content_warning(contrast, "tiles of the crop"),
                       input_kind="crop")


def _view_attribution(chain: Chain, rgb: np.ndarray, image_id: str, cells: np.ndarray,
                      feats: Features) -> tuple[float, np.ndarray]:
    """Combined logit of the K views and, per patch, with that patch occluded in every view."""
    count, views = chain.spec.count, chain.views
    comps = [composite(rgb, c, chain.spec) for c in view_cells(cells, image_id, views)]
    where = np.argsort(view_orders(image_id, views, count), axis=1)  # [view, patch] -> tile
    occluded = np.stack([occlude(comps[v], [where[v, k]], chain.spec)
                         for k in range(count) for v in range(views)])
    logits = torch.from_numpy(score_composites(chain, occluded, feats.text)).reshape(count, views)
    base = head_logits(chain, feats.image[0], feats.text.expand(views, -1))[None]
    return (float(combine_views(base, chain.view_average)[0]),
            combine_views(logits, chain.view_average).numpy())


def write_report(ex: Explanation, out: str | Path, k: int = 5) -> tuple[Path, Path]:
    """The PNG report at ``out`` and its JSON twin (same stem, ``.json``)."""
    from nsnet.atomic import write_json
    from nsnet.reports.figures import render_explanation

    out = Path(out)
    png = render_explanation(ex, out, k)
    js = out.with_suffix(".json")
    write_json(js, ex.to_json(k))
    return png, js
