"""The ``train`` stage: fit the configured head on the protocol's training rows."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pipeline.atomic import atomic_path
from pipeline.config import HEAD_RECIPES, Params
from pipeline.data.experiment import Experiment, resolve_experiment, with_seed
from pipeline.extraction.cached_features import (
    FeatureSet,
    Rows,
    load_features,
    training_crops,
)
from pipeline.heads.bundle import save_bundle
from pipeline.heads.decision import Decision, fit_decision
from pipeline.heads.head_training import HeadTraining
from pipeline.heads.training_loop import (
    HPARAM_KEYS,
    EpochCallback,
    TrainResult,
    fit,
    head_shape,
    predict_logits,
)
from pipeline.provenance import base_provenance, fingerprint

SEEDS_DIR = "seeds"  # models/detector/seeds/<seed>/: the bundles of train.seeds after the first


def training_sets(params: Params, fs: FeatureSet, experiment: Experiment | None = None
                  ) -> tuple[FeatureSet, FeatureSet]:
    """Train and validation rows of the experiment (validation = same sources, val split):
    the preset's training sources (those present) or ``protocol.train_sources`` ([] = all).
    Without ``experiment`` it is resolved from ``params`` and ``fs``'s rows."""
    made_with = fs.provenance.get("protocol", {}).get("train_reencode", "") or ""
    if params.protocol.train_reencode != made_with:
        raise ValueError(
            f"protocol.train_reencode={params.protocol.train_reencode!r} but the features were "
            f"computed with train_reencode={made_with!r}; rerun `nsnet extract` (or "
            "`dvc repro`) so that the training images are re-encoded as the params say"
        )
    exp = experiment or resolve_experiment(params, fs.frame)
    return fs.subset(exp.train_mask(fs.frame)), fs.subset(exp.val_mask(fs.frame))


def _preset_info(exp: Experiment) -> dict[str, Any]:
    if exp.preset is None:
        return {}
    return {"preset": exp.preset.name, "preset_train_sources": list(exp.preset.training),
            "preset_train_missing": list(exp.preset_missing)}


def bundle_config(params: Params, kind: str, result: TrainResult, fs: FeatureSet,
                  train: FeatureSet, dim: int, decision: Decision | None = None,
                  decision_report: dict[str, Any] | None = None,
                  experiment: Experiment | None = None) -> dict[str, Any]:
    prov = fs.provenance  # spelled as params.yaml (pipeline.extraction.cached_features)
    exp = experiment or resolve_experiment(params, fs.frame)
    decision = decision or Decision()
    recipe = HEAD_RECIPES[kind]
    return {
        "head": {"kind": kind, "dim": dim, "recipe": recipe,
                 "row_shape": list(prov.get("row_shape") or [dim]),
                 "hparams": {k: getattr(params.train, k) for k in HPARAM_KEYS}},
        "threshold": decision.threshold,
        "decision": {**decision.to_json(), **(decision_report or {})},
        # patch-order views the head was trained on, and how scoring combines them
        "views": {"count": fs.n_views, "average": params.evaluate.view_average},
        "uncertain_band": params.evaluate.uncertain_band,
        "backbones": backbones(params, prov, recipe),
        "training": {
            "params": dataclasses.asdict(params.train),
            "protocol": dataclasses.asdict(params.protocol),
            "n_train": len(train), "train_sources": sorted(set(train.frame["source"])),
            "recipe": recipe,
            "train_ids": fingerprint(train.frame["id"].tolist()),
            **_preset_info(exp),
            "features": fingerprint(prov),
            "best_epoch": result.best_epoch, "best_val_ap": result.best_val_ap,
            **result.info,
        },
        "provenance": base_provenance(),
    }


def backbones(params: Params, prov: dict[str, Any], recipe: str) -> dict[str, Any]:
    """What ``predict`` must run to make the head's input: the backbone that made the features
    (its settings and facts, from the features' provenance), and BLIP plus the patch spec (the
    composite recipe) or the recipe's own settings."""
    clip = prov.get("clip", {})
    r = params.recipes
    arch, pretrained = clip.get("arch"), clip.get("pretrained")
    if recipe == "cozzolino":  # its own backbone made the features
        arch, pretrained = r.cozzolino_arch, r.cozzolino_pretrained
    facts = {"clip_arch": arch, "clip_pretrained": pretrained,
             **{k: clip.get(k) for k in ("weights", "weights_blake2b", "mean", "std",
                                         "image_size", "embed_dim")}}
    if recipe == "composite":
        return {"clip": facts,
                "blip": {"model": prov.get("caption", {}).get("model"),
                         "max_new_tokens": params.caption.max_new_tokens},
                "patches": {k: v for k, v in prov.get("patches", {}).items() if k != "views"}
                or None}
    spec: dict[str, Any] = {"name": recipe}
    if recipe == "clip_layers":
        spec["layers"] = r.layers if isinstance(r.layers, str) else list(r.layers)
    if recipe == "cozzolino":
        spec["backbone"] = {"arch": r.cozzolino_arch, "pretrained": r.cozzolino_pretrained}
    return {"clip": facts, "recipe": spec}


def epoch_bar(total: int, desc: str) -> tqdm:
    """A progress bar over training epochs (shows the last validation AP)."""
    return tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True, mininterval=0.5)


TrainViews = Callable[[pd.DataFrame], "Rows | None"]


def train_head(params: Params, kind: str, fs: FeatureSet,
               on_epoch: EpochCallback | None = None, bar: tqdm | None = None,
               *, train_crops: TrainViews | None = None, experiment: Experiment | None = None
               ) -> tuple[TrainResult, dict[str, Any]]:
    """Fit one head (seed ``train.seed``) on the experiment's training rows (resolved from
    ``params`` when not given); ``bar`` (if given) advances once per epoch.

    ``fs`` holds the features of the head's recipe; ``train_crops(frame)`` (the cropped
    recipes) gives the training rows' augmented crops, which the head trains on instead of the
    test-time crop, one drawn per image per epoch (validation and test read crop 0)."""
    exp = experiment or resolve_experiment(params, fs.frame)
    train, val = training_sets(params, fs, exp)
    views = train_crops(train.frame) if train_crops is not None else None
    if views is not None:
        train = train.with_image(views)

    def epoch_done(row: dict[str, float]) -> None:
        if bar is not None:
            bar.update(1)
            if "val_ap" in row:
                bar.set_postfix_str(f"{kind} val AP {row['val_ap']:.3f}", refresh=False)
        if on_epoch is not None:
            on_epoch(row)

    result = fit(kind, train, val, params.train, on_epoch=epoch_done,
                 view_average=params.evaluate.view_average)
    decision, report = fit_decision(
        params.evaluate.threshold, params.evaluate.calibration,
        predict_logits(result.model, val.image, val.text,
                       average=params.evaluate.view_average), val.frame["label"].to_numpy())
    return result, bundle_config(params, kind, result, fs, train, head_shape(kind, fs)[0],
                                 decision, report, exp)


def seed_dir(out_dir: str | Path, seed: int) -> Path:
    """Where the bundle of a further seed of ``train.seeds`` goes."""
    return Path(out_dir) / SEEDS_DIR / str(seed)


def head_features(params: Params, manifest: str | Path, features: str | Path, kind: str
                  ) -> tuple[FeatureSet, TrainViews | None]:
    """The features of ``kind``'s recipe, and its training crops (the cropped recipes)."""
    recipe = HEAD_RECIPES[kind]
    fs = load_features(params, manifest, features, recipe=recipe)
    if recipe in ("clip_crop", "clip_layers"):
        return fs, lambda frame: training_crops(params, features, recipe, frame)
    return fs, None


HeadInputs = Callable[[str], "tuple[FeatureSet, TrainViews | None]"]


def head_inputs(params: Params, manifest: str | Path, features: str | Path) -> HeadInputs:
    """``inputs(kind)``: ``head_features`` of ``kind``, each recipe's features loaded once
    (``compare``, ``matrix`` and ``robustness`` train several heads)."""
    loaded: dict[str, tuple[FeatureSet, TrainViews | None]] = {}

    def inputs(kind: str) -> tuple[FeatureSet, TrainViews | None]:
        recipe = HEAD_RECIPES[kind]
        if recipe not in loaded:
            loaded[recipe] = head_features(params, manifest, features, kind)
        return loaded[recipe]

    return inputs


def epochs_of(params: Params, kind: str) -> int:
    """How many epochs ``kind`` trains for at most (its paper's, or ``train.epochs``)."""
    return HeadTraining.of(kind, params.train).epochs


def run_train(params: Params, manifest: str | Path, features: str | Path, out_dir: str | Path,
              log_csv: str | Path) -> dict[str, Any]:
    """Train ``train.head`` once per seed of the experiment. The first seed's bundle is
    ``out_dir`` (what predict, explain and serve load) and its per-epoch log ``log_csv`` (a
    DVC plots file, rewritten every epoch); every further seed's bundle goes to
    ``out_dir/seeds/<seed>`` for ``nsnet evaluate``. Returns the first seed's training
    record, with ``seeds`` (each seed's best epoch and val AP) when there are several."""
    kind = params.train.head
    fs, views = head_features(params, manifest, features, kind)
    exp = resolve_experiment(params, manifest)
    rows: list[dict[str, float]] = []

    def log_epoch(row: dict[str, float]) -> None:
        rows.append(row)
        with atomic_path(log_csv) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)

    runs: dict[int, dict[str, Any]] = {}
    with epoch_bar(epochs_of(params, kind) * exp.n_seeds, "train") as bar:
        for i, seed in enumerate(exp.seeds):
            result, config = train_head(with_seed(params, seed), kind, fs,
                                        log_epoch if i == 0 else None, bar,
                                        train_crops=views, experiment=exp)
            if i == 0:
                save_bundle(out_dir, result.model, config)
                shutil.rmtree(Path(out_dir) / SEEDS_DIR, ignore_errors=True)
                first = config["training"]
            else:
                save_bundle(seed_dir(out_dir, seed), result.model, config)
            runs[seed] = {"best_epoch": result.best_epoch, "best_val_ap": result.best_val_ap}
    if exp.n_seeds > 1:
        return {**first, "seeds": runs}
    return first
