"""The ``train`` stage: fit the configured head on the protocol's training rows.

It also holds the experiment loop every command shares: ``fit_over_seeds`` trains one head
once per seed of the experiment and returns typed ``SeedFits``, which ``nsnet train`` saves
and ``compare``, ``matrix`` and ``robustness`` score."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from nsnet.atomic import atomic_path
from nsnet.config import Params, ProtocolParams
from nsnet.data.experiment import Experiment, resolve_experiment, with_seed
from nsnet.extraction.cached_features import (
    FeatureSet,
    Rows,
    load_features,
    training_crops,
)
from nsnet.extraction.settings import ExtractSettings
from nsnet.heads.bundle import save_bundle
from nsnet.heads.bundle_config import (
    Backbones,
    BundleConfig,
    BundleDecision,
    CaptionFacts,
    ClipFacts,
    HeadConfig,
    HeadSettings,
    PatchesConfig,
    RecipeFacts,
    ViewsConfig,
)
from nsnet.heads.decision import Decision, fit_decision
from nsnet.heads.method import method
from nsnet.heads.training_info import TrainingRecord
from nsnet.heads.training_loop import (
    EpochCallback,
    TrainResult,
    fit,
    head_shape,
    predict_logits,
)
from nsnet.provenance import base_provenance, fingerprint
from nsnet.registry import RECIPES

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
    return {"preset": exp.preset.name, "preset_train_sources": tuple(exp.preset.training),
            "preset_train_missing": tuple(exp.preset_missing)}


def bundle_config(params: Params, kind: str, result: TrainResult, fs: FeatureSet,
                  train: FeatureSet, dim: int, decision: Decision | None = None,
                  decision_report: dict[str, Any] | None = None,
                  experiment: Experiment | None = None) -> BundleConfig:
    """The config of the bundle of a head trained on ``train`` (rows of ``fs``)."""
    prov = fs.provenance  # spelled as params.yaml (nsnet.extraction.cached_features)
    exp = experiment or resolve_experiment(params, fs.frame)
    recipe = method(kind).recipe
    return BundleConfig(
        head=HeadConfig(name=kind, dim=dim, recipe=recipe,
                        row_shape=tuple(prov.get("row_shape") or [dim]),
                        train=HeadSettings.of(params.train)),
        decision=BundleDecision.of(decision or Decision(), params.evaluate.uncertain_band,
                                   decision_report),
        # patch-order views the head was trained on, and how scoring combines them
        views=ViewsConfig(fs.n_views, params.evaluate.view_average),
        backbones=backbones(params, prov, recipe),
        training=TrainingRecord(
            **result.info.as_kwargs(),
            params=dataclasses.replace(copy.deepcopy(params.train), head=kind),
            protocol=training_protocol(params),
            n_train=len(train), train_sources=tuple(sorted(set(train.frame["source"]))),
            recipe=recipe, train_ids=fingerprint(train.frame["id"].tolist()),
            features=fingerprint(prov), best_epoch=result.best_epoch,
            best_val_ap=result.best_val_ap, **_preset_info(exp)),
        provenance=base_provenance(),
    )


def training_protocol(params: Params) -> ProtocolParams:
    """The protocol a head trains under: preset, training sources, re-encoding; the test side
    (``test_sources``, ``degradations``) takes no part and is recorded empty, so a bundle does
    not change when only that side does."""
    return dataclasses.replace(copy.deepcopy(params.protocol), test_sources=[], degradations=[])


def backbones(params: Params, prov: dict[str, Any], recipe: str) -> Backbones:
    """What ``predict`` must run to make the head's input: the backbone that made the features
    (its settings and facts, from the features' provenance), and the captioner plus the patch
    spec (the composite recipe) or the recipe's own settings (``Recipe.bundle_facts``)."""
    clip = prov.get("clip", {})
    rec = RECIPES.get(recipe)
    spec = rec.spec(params)
    # the recipe's own backbone made the features (cozzolino), or the main CLIP
    arch, pretrained = rec.own_backbone(spec) or (clip.get("arch"), clip.get("pretrained"))
    listed = {k: tuple(clip[k]) for k in ("mean", "std") if clip.get(k) is not None}
    facts = ClipFacts(arch=arch, pretrained=pretrained or "",
                      **{k: clip.get(k) for k in ("weights", "weights_blake2b", "open_clip",
                                                  "image_size", "embed_dim")}, **listed)
    if rec.patch_orders:
        patches = prov.get("patches") or {}
        return Backbones(
            clip=facts,
            caption=CaptionFacts(prov.get("caption", {}).get("model"),
                                 params.caption.max_new_tokens),
            patches=PatchesConfig(**{k: patches[k] for k in ("size", "n_low", "n_high")})
            if patches else None)
    return Backbones(clip=facts, recipe=RecipeFacts(recipe, **rec.bundle_facts(spec)))


def epoch_bar(total: int, desc: str) -> tqdm:
    """A progress bar over training epochs (shows the last validation AP)."""
    return tqdm(total=total, desc=desc, unit="epoch", dynamic_ncols=True, mininterval=0.5)


TrainViews = Callable[[pd.DataFrame], "Rows | None"]


def train_head(params: Params, kind: str, fs: FeatureSet,
               on_epoch: EpochCallback | None = None, bar: tqdm | None = None,
               *, train_crops: TrainViews | None = None, experiment: Experiment | None = None
               ) -> tuple[TrainResult, BundleConfig]:
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


# --- the experiment loop: one detector over the seeds (train, compare, matrix, robustness) ---

@dataclass(frozen=True)
class SeedFit:
    """One seed's trained head and the config its bundle would carry."""

    seed: int
    params: Params  # the params with ``train.seed`` = seed
    result: TrainResult
    config: BundleConfig

    @property
    def model(self) -> Any:
        return self.result.model

    @property
    def decision(self) -> Decision:
        return self.config.decision.as_decision()

    def record(self) -> dict[str, Any]:
        """The bundle's training record, as JSON."""
        assert self.config.training is not None
        return self.config.training.to_json()


@dataclass(frozen=True)
class SeedFits:
    """Head ``kind`` fit once per seed of the experiment (the first seed first)."""

    kind: str
    fits: tuple[SeedFit, ...]

    def __iter__(self) -> Iterator[SeedFit]:
        return iter(self.fits)

    @property
    def first(self) -> SeedFit:
        return self.fits[0]

    @property
    def several(self) -> bool:
        return len(self.fits) > 1

    def record(self) -> dict[str, Any]:
        """The first seed's training record; with several seeds, every seed's best epoch and
        validation AP under ``seeds``."""
        out = self.first.record()
        if self.several:
            out["seeds"] = {f.seed: {"best_epoch": f.result.best_epoch,
                                     "best_val_ap": f.result.best_val_ap} for f in self.fits}
        return out

    def each(self, score: Callable[[SeedFit], Any]) -> dict[int, Any]:
        """``{seed: score(fit)}``: what a caller measures of every seed's head."""
        return {f.seed: score(f) for f in self.fits}


def fit_over_seeds(params: Params, exp: Experiment, kind: str, fs: FeatureSet,
                   train_crops: TrainViews | None = None, bar: Any = None,
                   on_first_epoch: EpochCallback | None = None) -> SeedFits:
    """Train ``kind`` on ``exp``'s training rows of ``fs`` once per seed of ``exp``.

    ``train_crops`` gives the cropped recipes' augmented training crops; ``bar`` advances once
    per epoch; ``on_first_epoch`` sees each epoch's log row of the first seed (``nsnet train``
    writes it as plots/train_log.csv)."""
    fits = []
    for i, seed in enumerate(exp.seeds):
        seeded = with_seed(params, seed)
        result, config = train_head(seeded, kind, fs, on_first_epoch if i == 0 else None, bar,
                                    train_crops=train_crops, experiment=exp)
        fits.append(SeedFit(seed, seeded, result, config))
    return SeedFits(kind, tuple(fits))


def seed_dir(out_dir: str | Path, seed: int) -> Path:
    """Where the bundle of a further seed of ``train.seeds`` goes."""
    return Path(out_dir) / SEEDS_DIR / str(seed)


def head_features(params: Params, manifest: str | Path, features: str | Path, kind: str
                  ) -> tuple[FeatureSet, TrainViews | None]:
    """The features of ``kind``'s recipe, and its training crops (the cropped recipes)."""
    recipe = method(kind).recipe
    settings = ExtractSettings.reading(params, recipe)  # once for the features and the crops
    fs = load_features(params, manifest, features, recipe=recipe, settings=settings)
    if RECIPES.get(recipe).train_kinds(settings):
        return fs, lambda frame: training_crops(params, features, recipe, frame, settings)
    return fs, None


HeadInputs = Callable[[str], "tuple[FeatureSet, TrainViews | None]"]


def head_inputs(params: Params, manifest: str | Path, features: str | Path) -> HeadInputs:
    """``inputs(kind)``: ``head_features`` of ``kind``, each recipe's features loaded once
    (``compare``, ``matrix`` and ``robustness`` train several heads)."""
    loaded: dict[str, tuple[FeatureSet, TrainViews | None]] = {}

    def inputs(kind: str) -> tuple[FeatureSet, TrainViews | None]:
        recipe = method(kind).recipe
        if recipe not in loaded:
            loaded[recipe] = head_features(params, manifest, features, kind)
        return loaded[recipe]

    return inputs


def epochs_of(params: Params, kind: str) -> int:
    """How many epochs ``kind`` trains for at most (its paper's, or ``train.epochs``)."""
    return method(kind).schedule(params.train).epochs


@dataclass(frozen=True, kw_only=True)
class TrainRun(TrainingRecord):
    """What ``run_train`` returns: the first seed's training record (its bundle's) and, with
    several seeds of ``train.seeds``, each seed's best epoch and validation AP."""

    seeds: dict[int, dict[str, Any]] = field(default_factory=dict)


def run_train(params: Params, manifest: str | Path, features: str | Path, out_dir: str | Path,
              log_csv: str | Path) -> TrainRun:
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

    with epoch_bar(epochs_of(params, kind) * exp.n_seeds, "train") as bar:
        fits = fit_over_seeds(params, exp, kind, fs, views, bar, on_first_epoch=log_epoch)
    save_bundle(out_dir, fits.first.model, fits.first.config)
    shutil.rmtree(Path(out_dir) / SEEDS_DIR, ignore_errors=True)
    for later in fits.fits[1:]:
        save_bundle(seed_dir(out_dir, later.seed), later.model, later.config)
    assert fits.first.config.training is not None
    return TrainRun(**fits.first.config.training.as_kwargs(),
                    seeds=fits.record().get("seeds", {}))
