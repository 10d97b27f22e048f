"""The ``extract`` stage: bring the feature store up to date with the manifest and params.

For every usable image of the manifest (and every test image under each of
``protocol.degradations``), the store must hold the patch selection (grid cells and entropies,
a few hundred bytes, never the composite pixels), the BLIP caption, the CLIP embedding of the
composite in each of the ``patches.views`` patch orders and the CLIP embedding of the caption.
The run is plan -> compute -> commit:

* ``plan`` (``nsnet.extraction.plan``) asks the store which (image, treatment, part) triples
  are missing, without loading a model or opening an image;
* ``compute_shard`` decodes each image of a shard once, derives every treatment's inputs from
  those pixels in worker processes, runs BLIP and CLIP on the missing ones only;
* each shard commits one new segment per part (``nsnet.cache_store``).

So a new image costs its own features only, a removed one costs nothing, a new ``clip.*``
setting never re-runs BLIP, and an interrupted run resumes from its committed segments.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nsnet.atomic import write_json
from nsnet.backbones.availability import Need, require_models
from nsnet.cache_store import FeatureStore, PartStore
from nsnet.config import Params
from nsnet.data.manifest import OK, read_manifest
from nsnet.extraction import sharding
from nsnet.extraction.image_pass import ImagePass, PassPlan, batches
from nsnet.extraction.plan import ExtractPlan, Shard, make_plan
from nsnet.extraction.settings import (
    CAPTION,
    CLIP_CROP,
    CLIP_LAYERS,
    COMPOSITE,
    COZZOLINO,
    SELECTION,
    TEXT,
    ExtractRuntime,
    ExtractSettings,
    crop_kind,
    image_kind,
    kind_base,
)
from nsnet.provenance import ProvenanceMismatch, base_provenance

RESUME_HINT = "a rerun of `nsnet extract` (or `dvc repro`) resumes from there"
# What the heads read from the store, beside its parts (``write_catalogs``): dvc.yaml's
# readers depend on these files, not on the whole store.
CLEAN_CATALOG, DEGRADED_CATALOG = "clean.json", "degraded.json"


@dataclass
class ExtractSummary:
    """What an extraction run did: samples computed and reused, by kind and treatment."""

    images: int  # usable manifest rows
    samples: int  # (image, treatment) pairs asked for
    computed: int
    reused: int
    missing: dict[str, int]  # work kind -> samples that lacked it
    treatments: dict[str, int]
    shards: int
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)
    migrated: list[str] = field(default_factory=list)  # parts converted from the old layout

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        treat = ", ".join(f"{n} {t or 'as is'}" for t, n in sorted(self.treatments.items()))
        kinds = ", ".join(f"{k} {n}" for k, n in self.missing.items())
        skipped = sum(self.skipped.values())
        why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(self.skipped.items()))
        if not self.computed:
            work = "all up to date in the store"
        else:
            work = (f"computed {self.computed} ({kinds}) in {self.shards} shard(s), "
                    f"{self.seconds:.1f} s, {self.images_per_s:.1f} images/s")
        moved = "".join(f"{line}\n" for line in self.migrated)
        return (f"{moved}extract: {self.images} images -> {self.samples} feature rows ({treat}); "
                f"{work}; reused {self.reused}"
                + (f"; {skipped} manifest row{'s' * (skipped != 1)} skipped ({why})"
                   if skipped else ""))


# ----------------------------------------------------------------------------- plan


def ok_rows(manifest_path: str | Path) -> pd.DataFrame:
    """The manifest's usable rows; ``attrs["skipped"]`` counts the others by reason."""
    df = read_manifest(manifest_path)
    ok = df["status"] == OK
    rows = df[ok].reset_index(drop=True)
    rows.attrs["skipped"] = {str(k): int(v) for k, v in df.loc[~ok, "status"].value_counts()
                             .sort_index().items()}
    return rows


def plan_extract(params: Params, manifest: str | Path, store: str | Path) -> ExtractPlan:
    """What ``run_extract`` would compute (no model loaded, no image opened)."""
    rows = ok_rows(manifest)
    fs = FeatureStore(store)
    fs.check_format()
    plan = make_plan(ExtractSettings.from_params(params), ExtractRuntime.from_params(params),
                     rows, fs, params.compute.shard_size)
    plan.skipped = dict(rows.attrs["skipped"])
    return plan


# ----------------------------------------------------------------------------- compute


def compute_shard(shard: Shard, progress: Callable[[int], Any] | None = None) -> int:
    """Compute a shard's missing kinds from one decode per image; commit one segment per part
    and treatment. Returns the number of samples."""
    from nsnet.backbones.clip import resolve_device
    from nsnet.backbones.precision import amp_dtype

    settings, rt = shard.settings, shard.runtime
    device = resolve_device(rt.device)
    amp = amp_dtype(settings.precision)
    kinds = set(shard.kinds)
    models = _load(settings, rt.device, kinds)
    out: dict[str, list[Any]] = {k: [] for k in kinds}
    if shard.needs_pixels:
        _image_pass(shard, models, amp, device, out, progress)
    if TEXT in kinds:
        captions = (out[CAPTION] if CAPTION in kinds else
                    [c for w in shard.images for c in w.captions])
        out[TEXT] = list(_encode_texts(models["clip"], captions, rt.clip_batch, amp))
        if not shard.needs_pixels and progress:
            progress(shard.samples)
    _commit(shard, out, models)
    return shard.samples


CLIP_KINDS = ("image", TEXT, CLIP_CROP, CLIP_LAYERS)  # computed by the main CLIP


def model_needs(settings: ExtractSettings, kinds: set[str]) -> dict[str, Need]:
    """The models that computing ``kinds`` loads, by role (``clip``, ``blip``, ``cozzolino``):
    the CLIP for embeddings, BLIP only for captions, Cozzolino's backbone for its recipe."""
    needs: dict[str, Need] = {}
    bases = {kind_base(k) for k in kinds}
    if bases & set(CLIP_KINDS):
        needs["clip"] = Need("clip", settings.clip.arch, settings.clip.pretrained,
                             ("clip.arch", "clip.pretrained"))
    if CAPTION in bases:
        needs["blip"] = Need("blip", settings.caption.model, keys=("caption.model",))
    if COZZOLINO in bases:
        spec = settings.recipe.cozzolino
        needs[COZZOLINO] = Need("clip", spec.arch, spec.pretrained,
                                ("recipes.cozzolino_arch", "recipes.cozzolino_pretrained"))
    return needs


def _load(settings: ExtractSettings, device: str, kinds: set[str]) -> dict[str, Any]:
    from nsnet.backbones.blip import load_blip
    from nsnet.backbones.clip import load_clip

    return {role: load_blip(n.name, device) if n.kind == "blip" else
            load_clip(n.name, n.pretrained, device)
            for role, n in model_needs(settings, kinds).items()}


def _image_pass(shard: Shard, models: dict[str, Any], amp: torch.dtype | None,
                device: torch.device, out: dict[str, list[Any]],
                progress: Callable[[int], Any] | None) -> None:
    settings, rt = shard.settings, shard.runtime
    blip = models.get("blip")
    resize = blip.resizer if blip is not None else None
    plan = PassPlan(settings.patches, rt.max_pixels, select=SELECTION in shard.kinds,
                    views=shard.views, keep_view0=COMPOSITE in shard.kinds, blip=resize,
                    crop_indices=shard.views_of(CLIP_CROP),
                    layer_indices=shard.views_of(CLIP_LAYERS),
                    cozzolino=COZZOLINO in shard.kinds)
    built = plan.composites
    batch_size = rt.caption_batch if blip is not None else rt.clip_batch
    for batch in batches(ImagePass(shard.images, plan), batch_size, rt.num_workers,
                         pin=device.type == "cuda"):
        n = len(next(iter(batch.values())))
        if plan.select:
            out[SELECTION].extend(zip(batch["cells"].numpy(), batch["entropy"].numpy(),
                                      strict=True))
        if blip is not None:
            pixels = resize.normalise(batch["blip"], device)  # type: ignore[union-attr]
            out[CAPTION].extend(blip.generate(pixels, settings.caption.max_new_tokens, amp))
        for view in shard.views:
            comps = batch["composite"][:, built.index(view)].numpy()
            out[image_kind(view)].extend(
                _encode_images(models["clip"], comps, rt.clip_batch, amp))
        if COMPOSITE in shard.kinds:
            out[COMPOSITE].extend(batch["composite"][:, built.index(0)].numpy())
        _recipes(shard, models, batch, amp, out)
        if progress:
            progress(n)


def _recipes(shard: Shard, models: dict[str, Any], batch: dict[str, torch.Tensor],
             amp: torch.dtype | None, out: dict[str, list[Any]]) -> None:
    """The baseline recipes of one batch: ``clip_crop`` embeddings, ``clip_layers`` class
    tokens (crop 0 of both, the same center crop, in one forward pass) and ``cozzolino``."""
    from nsnet.backbones import recipes

    rt, spec = shard.runtime, shard.settings.recipe
    layers = None if spec.layers == "all" else list(spec.layers)
    crops, tokens = shard.views_of(CLIP_CROP), shard.views_of(CLIP_LAYERS)
    clip, bs = models.get("clip"), rt.clip_batch

    def chunks(pixels: np.ndarray, fn: Callable[[np.ndarray], Any]) -> list[Any]:
        got = [fn(pixels[i:i + bs]) for i in range(0, len(pixels), bs)]
        return [np.concatenate([g[j].cpu().numpy() for g in got]) for j in range(len(got[0]))] \
            if isinstance(got[0], tuple) else [np.concatenate([g.cpu().numpy() for g in got])]

    shared = 0 in crops and 0 in tokens
    if shared:
        pixels = batch[CLIP_CROP][:, crops.index(0)].numpy()
        emb, toks = chunks(pixels, lambda p: recipes.image_tower(clip, p, layers, amp))
        out[crop_kind(CLIP_CROP, 0)].extend(emb.astype(np.float16))
        out[crop_kind(CLIP_LAYERS, 0)].extend(toks.astype(np.float16))
    for view in crops:
        if not (shared and view == 0):
            pixels = batch[CLIP_CROP][:, crops.index(view)].numpy()
            (emb,) = chunks(pixels, lambda p: recipes.clip_crop_embeddings(clip, p, amp))
            out[crop_kind(CLIP_CROP, view)].extend(emb.astype(np.float16))
    for view in tokens:
        if not (shared and view == 0):
            pixels = batch[CLIP_LAYERS][:, tokens.index(view)].numpy()
            (toks,) = chunks(pixels, lambda p: recipes.clip_layers(clip, p, layers, amp))
            out[crop_kind(CLIP_LAYERS, view)].extend(toks.astype(np.float16))
    if COZZOLINO in shard.kinds:
        pixels = batch[COZZOLINO].numpy()
        (feat,) = chunks(pixels, lambda p: recipes.cozzolino_features(models[COZZOLINO], p, amp))
        out[COZZOLINO].extend(feat.astype(np.float16))


def _encode_images(clip: Any, composites: np.ndarray, batch: int, amp: torch.dtype | None
                   ) -> np.ndarray:
    """(n, S, S, 3) uint8 -> (n, d) float16 CLIP image embeddings, ``batch`` at a time."""
    if not len(composites):
        return np.empty((0, clip.embed_dim), np.float16)
    return np.concatenate([clip.encode_images(composites[i:i + batch], amp).cpu().numpy()
                           .astype(np.float16) for i in range(0, len(composites), batch)])


def _encode_texts(clip: Any, captions: list[str], batch: int, amp: torch.dtype | None
                  ) -> np.ndarray:
    if not captions:
        return np.empty((0, clip.embed_dim), np.float16)
    return np.concatenate([clip.encode_texts(captions[i:i + batch], amp).cpu().numpy()
                           .astype(np.float16) for i in range(0, len(captions), batch)])


def _commit(shard: Shard, out: dict[str, list[Any]], models: dict[str, Any]) -> None:
    """One segment per (kind, treatment), selections and captions first (what later kinds of
    an interrupted shard build on)."""
    from nsnet.extraction.plan import kind_rank

    store = FeatureStore(shard.store)
    ids = [w.image_id for w in shard.images for _ in w.treatments]
    treats = np.asarray([t for w in shard.images for t in w.treatments], dtype=object)
    base = {**base_provenance(), **shard.settings.provenance(), "stage": "extract"}
    for kind in sorted(shard.kinds, key=kind_rank):
        rows = out[kind]
        if len(rows) != len(ids):
            raise RuntimeError(f"extract computed {len(rows)} {kind} rows for {len(ids)} "
                               "samples")
        for treatment in sorted(set(treats)):
            pick = np.flatnonzero(treats == treatment)
            part = shard.settings.parts(treatment).by_kind()[kind]
            model_prov = _model_provenance(kind, models)
            target = store.part(part)
            _check_same_weights(target, model_prov)
            target.write_segment([ids[i] for i in pick], _arrays(kind, [rows[i] for i in pick]),
                                 {**base, **model_prov, "treatment": treatment})


def _arrays(kind: str, rows: list[Any]) -> dict[str, np.ndarray]:
    if kind == SELECTION:
        return {"cells": np.stack([c for c, _ in rows]).astype(np.int32),
                "entropy": np.stack([e for _, e in rows]).astype(np.float32)}
    if kind == CAPTION:
        return {"caption": np.asarray(rows, dtype=object)}
    if kind == COMPOSITE:
        return {"composite": np.stack(rows).astype(np.uint8)}
    return {"emb": np.stack(rows).astype(np.float16)}  # image, text, the baseline recipes


def _model_provenance(kind: str, models: dict[str, Any]) -> dict[str, Any]:
    base = kind_base(kind)
    if base == CAPTION:
        return dict(models["blip"].provenance)
    if base == COZZOLINO:
        return dict(models[COZZOLINO].provenance)
    if base in CLIP_KINDS:
        return dict(models["clip"].provenance)
    return {}


# Provenance keys that identify a model's weights beyond its name (a local checkpoint's hash,
# the hub revision): rows of one part must all come from the same weights.
WEIGHT_KEYS = ("weights", "weights_blake2b", "blip_weights", "blip_revision")


def _check_same_weights(part: PartStore, model_prov: dict[str, Any]) -> None:
    made = part.info().get("provenance", {})
    diffs = [f"{k}: store has {made[k]!r}, now {model_prov[k]!r}" for k in WEIGHT_KEYS
             if k in made and k in model_prov and made[k] != model_prov[k]]
    if diffs:
        raise ProvenanceMismatch(
            f"{part.path} holds {part.part.name} features of other weights with the same "
            "name, which will not be mixed in:\n  " + "\n  ".join(diffs)
            + "\nGive the new weights another name (or path), or remove the old part with "
              "`nsnet cache --gc` after changing the params.")


# ----------------------------------------------------------------------------- the stage


def run_extract(params: Params, manifest: str | Path, store: str | Path,
                scheduler: str = "") -> ExtractSummary:
    """Plan, compute the missing samples (in-process or on a dask cluster), commit them."""
    from nsnet import runtime
    from nsnet.backbones.clip import resolve_device

    migrated = _migrate_previous_layout(params, manifest, store)
    plan = plan_extract(params, manifest, store)  # reads the manifest and store, no image
    scheduler = scheduler or params.compute.scheduler
    if plan.shards and not scheduler:  # a cluster's workers have their own model caches
        kinds = {k for s in plan.shards for k in s.kinds}
        require_models(model_needs(plan.shards[0].settings, kinds).values(), "nsnet extract")
    FeatureStore(store).clean_tmp()
    seconds = 0.0
    if plan.shards:
        device = resolve_device(params.compute.device)
        runtime.configure_threads(params.compute.torch_threads, plan.shards[0].runtime
                                  .num_workers, device)
        if not scheduler:
            _load(plan.shards[0].settings, params.compute.device,
                  {k for s in plan.shards for k in s.kinds})  # fail fast on missing weights
        seconds = sharding.run(plan.shards, compute_shard, scheduler, "extract",
                               resume_hint=RESUME_HINT)
    write_catalogs(ExtractSettings.from_params(params), store)
    images = len(ok_rows(manifest))
    return ExtractSummary(images, plan.samples, plan.to_compute, plan.reused, plan.missing,
                          plan.treatments, len(plan.shards), seconds, plan.skipped, migrated)


def _migrate_previous_layout(params: Params, manifest: str | Path, store: str | Path
                             ) -> list[str]:
    """An empty store beside files of the previous layout: convert them first (no recompute;
    ``nsnet.extraction.store_admin.migrate_legacy``). The old files are left in place."""
    from nsnet.extraction.store_admin import has_legacy, migrate_legacy

    folder = Path(store).parent
    if FeatureStore(store).describe() or not has_legacy(folder):
        return []
    return migrate_legacy(params, ok_rows(manifest), folder, store)


def catalogs(settings: ExtractSettings, store: str | Path) -> dict[str, dict[str, Any]]:
    """What the heads read from the store under ``settings``: ``clean.json`` (images as they
    are, training images under ``protocol.train_reencode``) and ``degraded.json`` (the test
    images under each degradation), each the read parts' directories and segment files.

    Segments are never rewritten, so a catalog changes exactly when a part its readers read
    is renamed by a setting or gains rows: a stage reading clean features depends on
    ``clean.json``, and a new degradation's copies never re-run it."""
    fs = FeatureStore(store)

    def listing(treatments: list[str], test_only: bool) -> dict[str, list[str]]:
        parts = {p.relpath: p for t in treatments for k, p in settings.read_parts(t).items()
                 if not (test_only and settings.training_crops(k))}
        return {rel: list(fs.part(parts[rel]).segment_names()) for rel in sorted(parts)}

    return {CLEAN_CATALOG: {"parts": listing(sorted({"", settings.train_reencode}), False)},
            DEGRADED_CATALOG: {"parts": listing(list(settings.degradations), True)}}


def write_catalogs(settings: ExtractSettings, store: str | Path) -> None:
    """Write ``catalogs`` into the store, each only when its content changed."""
    root = Path(store)
    root.mkdir(parents=True, exist_ok=True)
    for name, body in catalogs(settings, root).items():
        path = root / name
        if not path.is_file() or json.loads(path.read_text()) != body:
            write_json(path, body)
