"""Planning an extraction: which (image, treatment, part) triples the store lacks, cut into
shards. No model is loaded and no image is opened here, so a plan is cheap to make and to test.

The manifest's usable rows ask for one *sample* per image in the clean pass (under
``protocol.train_reencode`` for training images) and one per test image and degradation. Each
sample lacks some *kinds* of work (``selection``, ``caption``, ``image:<view>``, ``text``,
``composite``, ``clip_crop:<crop>``, ``rigid``...: each recipe's parts): those whose part has no
row for the image's id. Samples that lack the same kinds are grouped, and an image's samples
stay together so that one decode serves all its treatments.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nsnet.cache_store import FeatureStore, encode_ids
from nsnet.data.manifest import file_paths
from nsnet.extraction.image_pass import ImageWork
from nsnet.extraction.settings import (
    CAPTION,
    COMPOSITE,
    IMAGE,
    SELECTION,
    TEXT,
    ExtractRuntime,
    ExtractSettings,
    kind_rank,
    pixel_kind,
)


@dataclass(frozen=True)
class Shard:
    """One unit of work: the images whose samples all lack the same ``kinds``."""

    index: int
    kinds: tuple[str, ...]
    images: tuple[ImageWork, ...]
    settings: ExtractSettings
    runtime: ExtractRuntime
    store: str  # the store's root directory

    @property
    def samples(self) -> int:
        return sum(len(w.treatments) for w in self.images)

    @property
    def needs_pixels(self) -> bool:
        return any(pixel_kind(k) for k in self.kinds)


@dataclass
class ExtractPlan:
    """What a run will compute, and what it reuses."""

    samples: int  # (image, treatment) pairs the params ask for
    reused: int  # of those, complete in the store
    missing: dict[str, int]  # work kind -> samples lacking it
    shards: list[Shard]
    treatments: dict[str, int]  # treatment ("" = as is) -> samples asked for
    skipped: dict[str, int] = field(default_factory=dict)  # manifest rows not usable, by reason

    @property
    def to_compute(self) -> int:
        return sum(s.samples for s in self.shards)


def requested_samples(settings: ExtractSettings, rows: pd.DataFrame
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(row index, treatment) of every sample the params ask for, in manifest order."""
    n = len(rows)
    splits = rows["split"].to_numpy()
    idx = [np.arange(n)]
    treat = [np.asarray([settings.treatment(s) for s in splits], dtype=object)]
    test = np.flatnonzero(splits == "test")
    for name in settings.degradations:
        idx.append(test)
        treat.append(np.full(len(test), name, dtype=object))
    return np.concatenate(idx), np.concatenate(treat)


def missing_kinds(settings: ExtractSettings, store: FeatureStore, rows: pd.DataFrame,
                  sample_row: np.ndarray, sample_treat: np.ndarray) -> dict[str, np.ndarray]:
    """Work kind -> boolean mask of the samples that need it and whose part lacks the id.

    Every sample needs every requested kind, except the augmented crops of the cropped
    recipes (``clip_crop:<k>``, ``clip_layers:<k>``, k > 0: ``Recipe.training_only``), which
    only training images need (the heads validate and test on crop 0, the test-time crop)."""
    ids = encode_ids(rows["id"].tolist())
    kinds = list(settings.parts("").by_kind())
    out = {k: np.zeros(len(sample_row), dtype=bool) for k in kinds}
    training = (rows["split"].to_numpy()[sample_row] == "train") & \
        (sample_treat == settings.treatment("train"))
    for treatment in sorted(set(sample_treat)):
        sel = np.flatnonzero(sample_treat == treatment)
        for kind, part in settings.parts(treatment).by_kind().items():
            wanted = sel[training[sel]] if settings.training_crops(kind) else sel
            out[kind][wanted] = ~store.part(part).index().contains(ids[sample_row[wanted]])
    # No dependency needs handling here: an image part's key includes its selection's key and
    # a text part's key its caption's, so a new selection or caption makes those parts (other
    # directories) lack the id as well.
    return out


def make_plan(settings: ExtractSettings, runtime: ExtractRuntime, rows: pd.DataFrame,
              store: FeatureStore, shard_size: int) -> ExtractPlan:
    """Every sample's missing kinds, grouped into shards of about ``shard_size`` samples."""
    sample_row, sample_treat = requested_samples(settings, rows)
    miss = missing_kinds(settings, store, rows, sample_row, sample_treat)
    order = sorted(miss, key=kind_rank)
    matrix = np.stack([miss[k] for k in order], axis=1) if order else np.zeros((0, 0), bool)
    lacking = matrix.any(axis=1)
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for s in np.flatnonzero(lacking):
        groups[tuple(k for k, m in zip(order, matrix[s], strict=True) if m)].append(int(s))
    paths = file_paths(rows)
    shards: list[Shard] = []
    for kinds in sorted(groups, key=lambda ks: [kind_rank(k) for k in ks]):
        works = _image_works(settings, store, rows, paths, kinds, groups[kinds], sample_row,
                             sample_treat)
        for chunk in _chunks(works, shard_size):
            shards.append(Shard(len(shards), kinds, tuple(chunk), settings, runtime,
                                str(store.root)))
    return ExtractPlan(
        samples=len(sample_row), reused=int((~lacking).sum()),
        missing={k: int(miss[k].sum()) for k in order if miss[k].any()},
        shards=shards, treatments=dict(Counter(sample_treat.tolist())))


def _image_works(settings: ExtractSettings, store: FeatureStore, rows: pd.DataFrame,
                 paths: Sequence[bytes], kinds: tuple[str, ...], samples: list[int],
                 sample_row: np.ndarray, sample_treat: np.ndarray) -> list[ImageWork]:
    """One ImageWork per image (in manifest order) with its samples' treatments, plus the
    selections and captions the store already has that this work builds on."""
    ids = rows["id"].tolist()
    by_image: dict[int, list[int]] = defaultdict(list)
    for s in samples:
        by_image[int(sample_row[s])].append(s)
    need_cells = SELECTION not in kinds and any(
        k == COMPOSITE or k.startswith(IMAGE + ":") for k in kinds)
    need_captions = TEXT in kinds and CAPTION not in kinds
    known_cells: dict[tuple[int, str], np.ndarray] = {}
    known_captions: dict[tuple[int, str], str] = {}
    for treatment in sorted({str(sample_treat[s]) for s in samples}):
        rws = [int(sample_row[s]) for s in samples if sample_treat[s] == treatment]
        parts = settings.parts(treatment)
        if need_cells:
            got = store.part(parts[SELECTION]).gather([ids[r] for r in rws], ["cells"])
            known_cells.update({(r, treatment): c for r, c in zip(rws, got["cells"],
                                                                   strict=True)})
        if need_captions:
            got = store.part(parts[CAPTION]).gather([ids[r] for r in rws], ["caption"])
            known_captions.update({(r, treatment): c for r, c in zip(rws, got["caption"],
                                                                      strict=True)})
    works = []
    for r in sorted(by_image):
        treats = tuple(str(sample_treat[s]) for s in by_image[r])
        works.append(ImageWork(
            ids[r], paths[r], treats,
            tuple(known_cells.get((r, t)) for t in treats),
            tuple(known_captions.get((r, t)) for t in treats)))
    return works


def _chunks(works: list[ImageWork], size: int) -> list[list[ImageWork]]:
    """Consecutive images with at most ``size`` samples per chunk (at least one image)."""
    out: list[list[ImageWork]] = []
    current: list[ImageWork] = []
    n = 0
    for w in works:
        if current and n + len(w.treatments) > size:
            out.append(current)
            current, n = [], 0
        current.append(w)
        n += len(w.treatments)
    if current:
        out.append(current)
    return out
