"""The ``train`` stage: fit the configured head on the protocol's training rows."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from pipeline.atomic import atomic_path
from pipeline.config import Params
from pipeline.data.experiment import Experiment, resolve_experiment, with_seed
from pipeline.extraction.cached_features import FeatureSet, load_features
from pipeline.heads.bundle import save_bundle
from pipeline.heads.decision import Decision, fit_decision
from pipeline.heads.training_loop import (
    HPARAM_KEYS,
    EpochCallback,
    TrainResult,
    fit,
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
    clip, caption = prov.get("clip", {}), prov.get("caption", {})
    exp = experiment or resolve_experiment(params, fs.frame)
    decision = decision or Decision()
    return {
        "head": {"kind": kind, "dim": dim,
                 "hparams": {k: getattr(params.train, k) for k in HPARAM_KEYS}},
        "threshold": decision.threshold,
        "decision": {**decision.to_json(), **(decision_report or {})},
        # patch-order views the head was trained on, and how scoring combines them
        "views": {"count": fs.n_views, "average": params.evaluate.view_average},
        "uncertain_band": params.evaluate.uncertain_band,
        "backbones": {
            "clip": {"clip_arch": clip.get("arch"), "clip_pretrained": clip.get("pretrained"),
                     **{k: clip.get(k) for k in ("weights", "weights_blake2b", "mean", "std",
                                                 "image_size", "embed_dim")}},
            "blip": {"model": caption.get("model"),
                     "max_new_tokens": params.caption.max_new_tokens},
            "patches": {k: v for k, v in prov.get("patches", {}).items() if k != "views"}
            or None,
        },
        "training": {
            "params": dataclasses.asdict(params.train),
            "protocol": dataclasses.asdict(params.protocol),
            "n_train": len(train), "train_sources": sorted(set(train.frame["source"])),
            "train_ids": fingerprint(train.frame["id"].tolist()),
            **_preset_info(exp),
            "features": fingerprint(prov),
            "best_epoch": result.best_epoch, "best_val_ap": result.best_val_ap,
            **result.info,
        },
        "provenance": base_provenance(),
    }


def epoch_bar(total: int, desc: str) -> tqdm:
    """A progress bar over training epochs (shows the last validation AP)."""
    return tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True, mininterval=0.5)


def train_head(params: Params, kind: str, fs: FeatureSet,
               on_epoch: EpochCallback | None = None, bar: tqdm | None = None,
               experiment: Experiment | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """Fit one head (seed ``train.seed``) on the experiment's training rows (resolved from
    ``params`` when not given); ``bar`` (if given) advances once per epoch."""
    exp = experiment or resolve_experiment(params, fs.frame)
    train, val = training_sets(params, fs, exp)

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
    return result, bundle_config(params, kind, result, fs, train, fs.dim,
                                 decision, report, exp)


def seed_dir(out_dir: str | Path, seed: int) -> Path:
    """Where the bundle of a further seed of ``train.seeds`` goes."""
    return Path(out_dir) / SEEDS_DIR / str(seed)


def run_train(params: Params, manifest: str | Path, features: str | Path, out_dir: str | Path,
              log_csv: str | Path) -> dict[str, Any]:
    """Train ``train.head`` once per seed of the experiment. The first seed's bundle is
    ``out_dir`` (what predict, explain and serve load) and its per-epoch log ``log_csv`` (a
    DVC plots file, rewritten every epoch); every further seed's bundle goes to
    ``out_dir/seeds/<seed>`` for ``nsnet evaluate``. Returns the first seed's training
    record, with ``seeds`` (each seed's best epoch and val AP) when there are several."""
    fs = load_features(params, manifest, features)
    exp = resolve_experiment(params, manifest)
    rows: list[dict[str, float]] = []

    def log_epoch(row: dict[str, float]) -> None:
        rows.append(row)
        with atomic_path(log_csv) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)

    runs: dict[int, dict[str, Any]] = {}
    with epoch_bar(params.train.epochs * exp.n_seeds, "train") as bar:
        for i, seed in enumerate(exp.seeds):
            result, config = train_head(with_seed(params, seed), params.train.head, fs,
                                        log_epoch if i == 0 else None, bar, exp)
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
