"""The ``extract`` stage: bring the feature store up to date with the manifest and params.

For every usable image of the manifest (and every test image under each of
``protocol.degradations``), the store must hold the parts of each recipe the heads read
(``nsnet.extraction.recipes``): for the composite recipe the patch selection (grid cells and
entropies, a few hundred bytes, never the composite pixels), the BLIP caption, the CLIP
embedding of the composite in each of the ``patches.views`` patch orders and the CLIP embedding
of the caption. The run is plan -> compute -> commit:

* ``plan`` (``nsnet.extraction.plan``) asks the store which (image, treatment, part) triples
  are missing, without loading a model or opening an image;
* ``compute_shard`` decodes each image of a shard once, derives every treatment's inputs from
  those pixels in worker processes, runs the recipes' models on the missing ones only;
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
from nsnet.extraction.recipe import MAIN, Recipe, RecipeRun
from nsnet.extraction.settings import (
    ExtractRuntime,
    ExtractSettings,
    kind_rank,
    recipe_of,
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
    and treatment. Returns the number of samples.

    Each recipe computes its own kinds (``Recipe.task``/``derive`` in the decoding workers,
    ``embed`` on each batch, ``after_pass``); the runner only loads the models they need,
    runs the pass and commits."""
    from nsnet.backbones.clip import resolve_device
    from nsnet.backbones.precision import amp_dtype

    settings, rt = shard.settings, shard.runtime
    device = resolve_device(rt.device)
    models = _load(settings, rt.device, set(shard.kinds))
    shared: dict[str, Any] = {}  # forward passes one batch shares between recipes
    runs = [(recipe, RecipeRun(settings.spec(recipe.name), kinds, models,
                               amp_dtype(settings.precision), rt.clip_batch, device, settings,
                               shared))
            for recipe, kinds in settings.kinds_by_recipe(shard.kinds)]
    tower = next((t for r, run in runs if (t := r.center_tokens(run)) is not None), None)
    for _, run in runs:
        run.tower_layers = tower
    out: dict[str, list[Any]] = {k: [] for k in shard.kinds}
    if shard.needs_pixels:
        _image_pass(shard, runs, shared, "blip" in models, device, out, progress)
    for recipe, run in runs:
        recipe.after_pass(run, shard.images, out)
    if not shard.needs_pixels and progress:
        progress(shard.samples)
    _commit(shard, out, models)
    return shard.samples


def model_needs(settings: ExtractSettings, kinds: set[str]) -> dict[str, Need]:
    """The models that computing ``kinds`` loads, by role (``clip``, ``blip``, ``cozzolino``):
    what each recipe's kinds need (``Recipe.needs``), the main CLIP first."""
    needs: dict[str, Need] = {}
    for recipe, mine in settings.kinds_by_recipe(kinds):
        needs.update(recipe.needs(settings, mine))
    return dict(sorted(needs.items(), key=lambda item: item[0] != MAIN))


def _load(settings: ExtractSettings, device: str, kinds: set[str]) -> dict[str, Any]:
    from nsnet.backbones.blip import load_blip
    from nsnet.backbones.clip import load_clip

    return {role: load_blip(n.name, device) if n.kind == "blip" else
            load_clip(n.name, n.pretrained, device)
            for role, n in model_needs(settings, kinds).items()}


def _image_pass(shard: Shard, runs: list[tuple[Recipe, RecipeRun]], shared: dict[str, Any],
                captions: bool, device: torch.device, out: dict[str, list[Any]],
                progress: Callable[[int], Any] | None) -> None:
    """Decode each image once (workers derive every recipe's pixels), then let each recipe
    embed each batch (``shared``: the runs' per-batch memo); a pass that captions runs at the
    captioner's batch size."""
    rt = shard.runtime
    tasks = [(recipe, run, task) for recipe, run in runs
             if (task := recipe.task(run)) is not None]
    plan = PassPlan(rt.max_pixels, tuple((recipe.name, task) for recipe, _, task in tasks))
    batch_size = rt.caption_batch if captions else rt.clip_batch
    for batch in batches(ImagePass(shard.images, plan), batch_size, rt.num_workers,
                         pin=device.type == "cuda"):
        n = len(next(iter(batch.values())))
        shared.clear()
        for recipe, run, task in tasks:
            for kind, rows in recipe.embed(run, task, batch).items():
                out[kind].extend(rows)
        if progress:
            progress(n)


def _commit(shard: Shard, out: dict[str, list[Any]], models: dict[str, Any]) -> None:
    """One segment per (kind, treatment), selections and captions first (what later kinds of
    an interrupted shard build on)."""
    store = FeatureStore(shard.store)
    ids = [w.image_id for w in shard.images for _ in w.treatments]
    treats = np.asarray([t for w in shard.images for t in w.treatments], dtype=object)
    base = {**base_provenance(), **shard.settings.provenance(), "stage": "extract"}
    for kind in sorted(shard.kinds, key=kind_rank):
        rows = out[kind]
        if len(rows) != len(ids):
            raise RuntimeError(f"extract computed {len(rows)} {kind} rows for {len(ids)} "
                               "samples")
        recipe = recipe_of(kind)
        role = recipe.model_role(kind)
        model_prov = dict(models[role].provenance) if role else {}
        for treatment in sorted(set(treats)):
            pick = np.flatnonzero(treats == treatment)
            part = shard.settings.parts(treatment).by_kind()[kind]
            target = store.part(part)
            _check_same_weights(target, model_prov)
            target.write_segment([ids[i] for i in pick],
                                 recipe.arrays(kind, [rows[i] for i in pick]),
                                 {**base, **model_prov, "treatment": treatment})


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
