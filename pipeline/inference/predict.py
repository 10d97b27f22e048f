"""Scoring new images with a trained bundle: the training feature chain, run on the fly.

``load_chain(bundle)`` rebuilds, from the bundle's ``config.json`` alone, the exact chain that
made the training features: patch selection with the bundle's patch spec (grid order seeded by
the content hash, as ``nsnet extract`` seeds it), a BLIP caption of the whole image, CLIP embeddings
of composite and caption, and the head. Embeddings are rounded through float16 like the
feature cache, so an image scores the same here as in ``nsnet evaluate``. A head trained on K
patch-order views (``patches.views``) gets the same K composites of each image, and their
logits are combined as the bundle says (``views.average``), as ``nsnet evaluate`` does.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nsnet.atomic import atomic_path
from nsnet.data.images import (
    UNSUPPORTED,
    ImageError,
    decode_data,
    display_path,
    read_bytes,
    unsupported_reason,
)
from nsnet.data.layouts import WalkError, walk_files
from nsnet.data.manifest import content_id
from nsnet.extraction.patch_selection import (
    PatchSpec,
    Selection,
    composite,
    select_batch,
    view_cells,
)
from nsnet.heads.bundle import load_bundle
from nsnet.heads.bundle_config import BundleConfig, RecipeFacts
from nsnet.heads.decision import Decision
from nsnet.heads.method import method
from nsnet.heads.output import device_of
from nsnet.heads.training_loop import combine_views, view_logits
from nsnet.inference.verdict import FAKE, REAL, UNCERTAIN, verdict
from nsnet.metrics import aligned
from nsnet.registry import RECIPES

RESULT_COLUMNS = ["path", "status", "prob", "label", "caption", "id", "width", "height", "error",
                  "semantic_share"]
OUT_FORMATS = (".csv", ".jsonl", ".parquet")
__all__ = ["FAKE", "REAL", "UNCERTAIN", "Chain", "load_chain", "predict_paths", "score_decoded"]


@dataclass
class Chain:
    """A bundle's head plus the backbones and settings that produce its input features.

    ``recipe`` says what the head reads (``composite``: patch composites and, for the advanced
    head, captions; ``clip_crop`` / ``clip_layers`` / ``cozzolino``: the baselines' crops), and
    only that is computed: BLIP runs only for a head that reads captions (its method's
    ``captions``),
    or when ``captions`` was asked for (``predict --captions``)."""

    head: torch.nn.Module
    config: BundleConfig
    spec: PatchSpec | None  # the patch spec (composite recipe)
    clip: Any  # nsnet.backbones.clip.ClipBackbone: the backbone that made the features
    blip: Any  # nsnet.backbones.blip.Captioner, or None when no caption is computed
    max_new_tokens: int
    threshold: float
    amp: torch.dtype | None = None
    decision: Decision = Decision()  # the bundle's calibration (and its threshold rule)
    views: int = 1  # patch-order views the head was trained on (bundle ``views.count``)
    view_average: str = "mean_logit"  # how their logits are combined (``views.average``)
    band: float = 0.0  # the bundle's uncertain_band: within it of the threshold is "uncertain"
    recipe: str = "composite"
    layers: list[int] | None = None  # clip_layers: the blocks read (None = all)

    def prob(self, logits: torch.Tensor | np.ndarray) -> np.ndarray:
        """Calibrated P(generated) of head logits (the probability ``nsnet evaluate`` uses)."""
        return self.decision.prob(np.asarray(logits, dtype=np.float64))

    @property
    def kind(self) -> str:
        return self.config.head.name

    @property
    def reads_captions(self) -> bool:
        return method(self.kind).captions

    @property
    def min_side(self) -> int:
        """The smallest image side the head can score (one patch; crops pad smaller images)."""
        return self.spec.size if self.spec is not None else 1


def load_chain(model_dir: str | Path, device: str = "auto", precision: str = "fp32",
               threshold: float | None = None, captions: bool = False) -> Chain:
    """Load a bundle and the backbones its config names (CLIP arch/weights, and BLIP plus the
    patch spec, or the recipe's crops and backbone).

    The chain computes exactly the features the head was trained on, so ``predict_paths`` on an
    indexed image gives the probability ``nsnet evaluate`` gives it. ``captions``: also caption
    the images with BLIP when the head does not read captions (a composite-recipe bundle).

    Raises ``FileNotFoundError``/``ValueError`` for a broken bundle and ``ModelUnavailable`` when
    a backbone's weights are missing.

    Example::

        chain = load_chain("models/detector", device="cuda")
        table = predict_paths(chain, ["photo.jpg"])  # prob, label, caption, ...
    """
    from nsnet.backbones.availability import BUNDLE_HINT, Need, require_models
    from nsnet.backbones.blip import load_blip
    from nsnet.backbones.clip import load_clip, resolve_device
    from nsnet.backbones.precision import amp_dtype

    head, config = load_bundle(model_dir, resolve_device(device))
    bb, recipe = config.backbones, config.head.recipe
    if bb is None:
        raise ValueError(f"{model_dir}: the bundle's config.json does not name its backbones "
                         "(backbones.clip, backbones.caption and backbones.patches, or "
                         "backbones.recipe); retrain it with `nsnet train`")
    caption = RECIPES.get(recipe).patch_orders and (method(config.head.name).captions or captions)
    needs = [Need("clip", bb.clip.arch, bb.clip.pretrained, ("backbones.clip",), False)]
    if caption and bb.caption:
        needs.append(Need("blip", bb.caption.model, "", ("backbones.caption",), False))
    require_models(needs, f"the bundle {model_dir}", BUNDLE_HINT)
    clip = load_clip(bb.clip.arch, bb.clip.pretrained, device)
    width = int(np.prod(config.head.shape))
    made = _feature_width(clip, recipe, bb.recipe)
    if made != width:
        raise ValueError(f"CLIP {bb.clip.arch} gives {made} values per image for the "
                         f"{recipe} recipe but the head expects {width}")
    blip = load_blip(bb.caption.model, device) if caption and bb.caption else None
    decision = config.decision.as_decision()
    layers = bb.recipe.layers if bb.recipe is not None else "all"
    return Chain(head, config, bb.patches.spec() if bb.patches else None, clip, blip,
                 bb.caption.max_new_tokens if bb.caption else 40,
                 float(decision.threshold if threshold is None else threshold),
                 amp_dtype(precision), decision, config.views.count, config.views.average,
                 config.decision.uncertain_band, recipe,
                 None if isinstance(layers, str) else list(layers))


def _feature_width(clip: Any, recipe: str, facts: RecipeFacts | None) -> int:
    """Values per image the backbone gives for ``recipe`` (the head's input width)."""
    rec = RECIPES.get(recipe)
    return rec.width(clip, rec.inference_spec(facts))


def as_cached(features: torch.Tensor) -> torch.Tensor:
    """Round like the feature cache (stored float16), back to float32 for the head."""
    return features.cpu().to(torch.float16).to(torch.float32)


@torch.no_grad()
def head_logits(chain: Chain, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Head logits for (B, d) image and text features (any device; returned on CPU)."""
    device = device_of(chain.head)
    return chain.head(image.to(device).float(), text.to(device).float()).logit.cpu()


@torch.no_grad()
def semantic_shares(chain: Chain, image: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """``||x - Px|| / ||x||`` per row: the share of the image feature removed as semantic.

    ``x`` is the feature the head sees (normalised for nsnet/advanced); 0 for the probes and
    the baselines, which remove nothing.
    """
    device = device_of(chain.head)
    out = chain.head(image.to(device).float(), text.to(device).float())
    return out.removed_share.cpu().numpy()


@dataclass
class Features:
    selections: list[Selection]  # composite recipe only ([] otherwise)
    captions: list[str]  # "" where no caption was computed
    image: torch.Tensor  # (B, d) float32, cache-rounded; (B, K, d) with K patch-order views
    text: torch.Tensor  # (B, d), or (B, 0) when the head reads no caption


def compute_features(chain: Chain, images: Sequence[np.ndarray], ids: Sequence[str]) -> Features:
    """The head's input features of decoded images, as the training chain made them (and the
    captions, when the chain computes them)."""
    if not RECIPES.get(chain.recipe).patch_orders:
        return Features([], [""] * len(images), _recipe_features(chain, images, ids),
                        torch.zeros((len(images), 0)))
    assert chain.spec is not None
    selections = select_batch(list(images), list(ids), chain.spec)
    captions = (chain.blip.caption(list(images), chain.max_new_tokens, chain.amp)
                if chain.blip is not None else [""] * len(images))
    comps = np.stack([s.composite for s in selections])
    image = as_cached(chain.clip.encode_images(comps, chain.amp))
    if chain.views > 1:
        cells = [view_cells(s.cells, i, chain.views) for s, i in zip(selections, ids, strict=True)]
        more = [as_cached(chain.clip.encode_images(np.stack(
            [composite(rgb, c[k], chain.spec) for rgb, c in zip(images, cells, strict=True)]),
            chain.amp)) for k in range(1, chain.views)]
        image = torch.stack([image, *more], dim=1)
    if chain.blip is not None and chain.reads_captions:
        text = as_cached(chain.clip.encode_texts(captions, chain.amp))
    else:  # the head ignores per-image captions (nsnet's basis is fixed): no text tower
        text = torch.zeros((len(images), int(chain.clip.embed_dim)))
    return Features(selections, captions, image, text)


def _recipe_features(chain: Chain, images: Sequence[np.ndarray], ids: Sequence[str]
                     ) -> torch.Tensor:
    """A crop recipe's input (its test-time kind, crop 0), computed as extract computes it:
    the recipe's own ``derive`` + ``embed`` (``Recipe.infer``), rows flattened."""
    rec = RECIPES.get(chain.recipe)
    bb = chain.config.backbones
    spec = rec.inference_spec(bb.recipe if bb is not None else None)
    return as_cached(rec.infer(chain.clip, spec, images, ids, chain.amp))


def first_view(image: torch.Tensor) -> torch.Tensor:
    """View 0's (B, d) features of (B, d) or (B, K, d) image features."""
    return image if image.dim() == 2 else image[:, 0]


def combined_logits(chain: Chain, image: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """One head logit per image of (B, d) or (B, K, d) features (views combined as in
    ``nsnet evaluate``)."""
    return combine_views(view_logits(chain.head, image, text), chain.view_average).numpy()


def probabilities(chain: Chain, image: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """Calibrated P(generated) of (B, d) or (B, K, d) features, as ``nsnet evaluate`` gives."""
    return chain.prob(combined_logits(chain, image, text))


def expand_inputs(items: Iterable[str | Path], errors: list[WalkError] | None = None
                  ) -> list[Path]:
    """Files as given, folders recursively (every file, as ``nsnet index`` walks them: directory
    symlinks followed once, dangling symlinks kept), globs expanded.

    Nothing is dropped: a name that matches nothing is kept (reported as ``missing``), files we
    do not decode come back as ``unsupported_format``, and folders that cannot be listed are
    appended to ``errors``.
    """
    out: list[Path] = []
    for item in items:
        text = str(item)
        matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        if not matches:
            out.append(Path(text))
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.extend(walk_files(p, errors))
            else:
                out.append(p)
    return list(dict.fromkeys(out))  # drop repeats, keep order


def check_out_path(out: str | Path | None) -> None:
    """Refuse an ``--out`` name we cannot write before any image is scored."""
    if out is not None and Path(out).suffix.lower() not in OUT_FORMATS:
        raise ValueError(f"--out {display_path(out)}: use a name ending in "
                         f"{', '.join(OUT_FORMATS)}")


Decoded = tuple[dict[str, Any], np.ndarray | None]


def new_row(name: str) -> dict[str, Any]:
    """An unscored result row (every ``RESULT_COLUMNS`` key) for the input called ``name``."""
    return {"path": name, "status": "ok", "prob": np.nan, "label": "", "caption": "", "id": "",
            "width": -1, "height": -1, "error": "", "semantic_share": np.nan}


def decode_bytes(data: bytes, name: str, max_pixels: int, min_side: int) -> Decoded:
    """A result row and the RGB array of encoded image bytes (``None`` + a status if unusable).

    The row's id is the content hash of the bytes, as in the manifest, so uploaded bytes score
    exactly as the same file does.
    """
    row = new_row(name)
    try:
        row["id"] = content_id(data)
        rgb, info = decode_data(data, name, max_pixels)  # warnings name the input
        return check_size(row, rgb, info.width, info.height, min_side)
    except ImageError as exc:
        row.update(status=exc.reason, error=exc.detail)
        return row, None


def check_size(row: dict[str, Any], rgb: np.ndarray, width: int, height: int,
               min_side: int) -> Decoded:
    """Record the size; an image smaller than one patch gets status ``too_small``."""
    row.update(width=width, height=height)
    if min(width, height) < min_side:
        row.update(status="too_small", error=f"{width}x{height} is smaller than one "
                                             f"{min_side}x{min_side} patch")
        return row, None
    return row, rgb


def _decode(path: Path, max_pixels: int, min_side: int) -> Decoded:
    name = display_path(path)  # printable even when the name is not valid UTF-8
    try:
        reason = unsupported_reason(path)
        if reason and not path.is_dir():
            raise ImageError(UNSUPPORTED, reason)
        data = read_bytes(path)
    except ImageError as exc:
        row = new_row(name)
        row.update(status=exc.reason, error=exc.detail)
        return row, None
    return decode_bytes(data, name, max_pixels, min_side)


def predict_paths(chain: Chain, paths: Sequence[str | Path], batch_size: int = 16,
                  max_pixels: int = 178_956_970,
                  progress: Callable[[int], Any] | None = None,
                  unlisted: Sequence[WalkError] = ()) -> pd.DataFrame:
    """Score every path; unreadable files get a status instead of a probability.

    ``unlisted`` folders (from ``expand_inputs``) get a row each, status ``unreadable``.
    """
    rows = []
    for w in unlisted:
        row = new_row(w.path)
        row.update(status="unreadable", error=f"folder could not be listed: {w.error}")
        rows.append((row, None))
    decoded = (_decode(Path(p), max_pixels, chain.min_side) for p in paths)
    return score_decoded(chain, [*rows, *decoded] if rows else decoded, batch_size, progress)


def score_decoded(chain: Chain, decoded: Iterable[Decoded], batch_size: int = 16,
                  progress: Callable[[int], Any] | None = None) -> pd.DataFrame:
    """Score decoded inputs ``(row, rgb or None)`` in batches; the rows of ``predict``.

    Every way in (``nsnet predict``, ``Detector.predict``, ``nsnet serve``) ends here, so the
    probability, label and caption of an image never depend on how it arrived.
    """
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        feats = compute_features(chain, [p[1] for p in pending], [p[0]["id"] for p in pending])
        probs = probabilities(chain, feats.image, feats.text)
        shares = semantic_shares(chain, first_view(feats.image), feats.text)
        for (row, _), prob, cap, share in zip(pending, probs, feats.captions, shares,
                                              strict=True):
            row.update(prob=float(prob), caption=cap, semantic_share=float(share),
                       label=verdict(prob, chain.threshold, chain.band))
        if progress:
            progress(len(pending))
        pending.clear()

    for row, rgb in decoded:
        rows.append(row)
        if rgb is None:
            if progress:
                progress(1)
            continue
        pending.append((row, rgb))
        if len(pending) >= batch_size:
            flush()
    flush()
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def write_results(df: pd.DataFrame, out: str | Path) -> Path:
    """Write results as .csv, .jsonl or .parquet (by suffix), atomically, with no sentinels: a
    field without a value (see ``output_frame``) is an empty CSV cell, JSON ``null`` or a
    Parquet null, as ``nsnet serve`` answers ``null``."""
    check_out_path(out)
    out = Path(out)
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if suffix == ".csv":
            output_frame(df).to_csv(tmp, index=False)
        elif suffix == ".jsonl":
            tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n"
                                   for row in json_rows(df)), encoding="utf-8")
        else:
            output_frame(df).to_parquet(tmp, index=False)
    return out


# Size columns: ``new_row`` marks "not decoded" with -1; outputs have no value there instead.
SIZE_COLUMNS = ("width", "height")


def output_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The results as written: no value (None / NA) wherever a row has none.

    Unscored rows have no prob, label, caption, semantic_share (and no width/height or id when
    the file was not decoded or read); a scored row has no error, nor a caption when the head
    reads none. The in-memory rows mark these with ``""``, ``-1`` and NaN.
    """
    out = df.copy()
    for col in out.columns:
        if col in SIZE_COLUMNS:
            size = pd.to_numeric(out[col], errors="coerce")
            out[col] = size.where(size >= 0).astype("Int64")
        elif not pd.api.types.is_numeric_dtype(out[col]):
            blank = out[col].map(lambda v: isinstance(v, str) and v == "").astype(bool)
            out[col] = out[col].astype(object).where(~blank, None)
    return out


def json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Result rows as plain JSON values: ``null`` for every field without a value (no NaN,
    ``""`` or -1; see ``output_frame``), the same fields ``nsnet serve`` answers ``null``."""
    def plain(v: Any) -> Any:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return None
        return v.item() if isinstance(v, np.generic) else v

    return [{k: plain(v) for k, v in row.items()}
            for row in output_frame(df).to_dict(orient="records")]


def short_path(path: str, width: int) -> str:
    """``path`` cut to ``width`` characters from the left (``…/dir/name.png``): the file name,
    the part that tells images apart, stays."""
    return path if len(path) <= width else "…" + path[-(width - 1):]


def skipped_summary(df: pd.DataFrame) -> str:
    """``3 skipped (corrupt: 1, missing: 2)``."""
    bad = df.loc[df["status"] != "ok", "status"].value_counts().sort_index()
    why = ", ".join(f"{k}: {int(v)}" for k, v in bad.items())
    return f"{int(bad.sum())} skipped" + (f" ({why})" if why else "")


def format_results(df: pd.DataFrame, max_caption: int = 48, max_path: int = 48) -> str:
    """A terminal table: probability, label and caption, or the reason a file was skipped.

    Columns are as wide as their widest cell; paths longer than ``max_path`` are shortened
    from the left (the full paths are in ``--out``)."""
    rows = [["prob", "label", "path", "caption / status"]]
    for r in df.itertuples(index=False):
        path = short_path(r.path, max_path)
        if r.status == "ok":
            cap = r.caption if len(r.caption) <= max_caption else r.caption[:max_caption - 1] + "…"
            rows.append([f"{r.prob:.3f}", r.label, path, cap])
        else:
            rows.append(["-", "skipped", path, f"[{r.status}] {r.error}"])
    return "\n".join(aligned(rows, right=(0,)))
