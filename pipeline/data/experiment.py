"""The experiment, decided once: which rows train, validate and test, the official rows with
their real pools and duplicate members, the seeds and the heads.

``resolve_experiment(params, manifest)`` reads the manifest once and returns a frozen
``Experiment``; ``train``, ``evaluate``, ``evaluate-degraded``, ``compare``, ``matrix``,
``robustness`` and ``report`` consume it instead of working the protocol out again:

* training and validation rows: the preset's training sources that are present, else
  ``protocol.train_sources`` ([] = every source), on the ``train`` / ``val`` split;
* test rows: every test row with a preset (its official rows pick and name them), else those of
  ``protocol.test_sources`` ([] = every source);
* duplicate members: the manifest keeps one copy of each content (the others have status
  ``duplicate``); a copy filed under another source in the same split with the same label comes
  back as a scored row sharing the kept copy's features (benchmarks share real pools between
  generators), never across splits (that would be train/test leakage);
* seeds: ``train.seeds`` ([] = the single ``train.seed``), heads: the heads ``compare`` trains.

Rows are chosen by masks over any frame of manifest rows (clean features, or the test rows of
a degraded copy), so every stage selects the same rows the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nsnet.config import Params
from nsnet.data.manifest import read_manifest
from nsnet.data.presets import Preset, get_preset, match_sources, preset_training

TRAIN_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Member:
    """A duplicate file of the manifest: same content as a kept row, filed under ``source``."""

    id: str
    source: str
    split: str
    label: int
    path: str


@dataclass(frozen=True)
class SourceRows:
    """How many real and generated usable images a source has in one split."""

    source: str
    split: str
    n_real: int
    n_fake: int


@dataclass(frozen=True)
class Experiment:
    """What one run trains and scores; see the module docstring. Build with
    ``resolve_experiment``; ``with_training`` gives the same experiment on other sources."""

    preset: Preset | None
    train_sources: tuple[str, ...] | None  # None = every source of the train/val splits
    train_error: str  # why no training rows can be chosen ("" = they can)
    preset_missing: tuple[str, ...]  # the preset's training sources that are absent
    test_sources: tuple[str, ...] | None  # None = every test source
    seeds: tuple[int, ...]
    heads: tuple[str, ...]
    counts: tuple[SourceRows, ...] = field(repr=False)
    members: tuple[Member, ...] = field(default=(), repr=False)

    # ------------------------------------------------------------------ rows
    def train_mask(self, frame: pd.DataFrame, split: str = "train") -> np.ndarray:
        """Rows of ``split`` (train or val) of the training sources; raises ``ValueError``
        when the protocol finds no training source."""
        if self.train_error:
            raise ValueError(self.train_error)
        mask = (frame["split"] == split).to_numpy()
        if self.train_sources is not None:
            mask = mask & frame["source"].isin(self.train_sources).to_numpy()
        return mask

    def val_mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Validation rows of the training sources (none when the preset finds none)."""
        if self.train_error:
            return np.zeros(len(frame), dtype=bool)
        return self.train_mask(frame, "val")

    def test_mask(self, frame: pd.DataFrame) -> np.ndarray:
        mask = (frame["split"] == "test").to_numpy()
        if self.test_sources is not None:
            mask = mask & frame["source"].isin(self.test_sources).to_numpy()
        return mask

    def member_rows(self, frame: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
        """(index of the kept row, the new row) for every duplicate member of ``frame``'s rows:
        same split and label as the kept copy, another source, not already a row."""
        if not self.members or not len(frame):
            return np.zeros(0, dtype=np.int64), frame.iloc[:0]
        first: dict[str, int] = {}
        for i, image_id in enumerate(frame["id"].tolist()):
            first.setdefault(image_id, i)
        seen = set(zip(frame["id"], frame["source"], strict=True))
        split, label = frame["split"].to_numpy(), frame["label"].to_numpy()
        idx, rows = [], []
        for m in self.members:
            i = first.get(m.id)
            if i is None or (m.id, m.source) in seen or split[i] != m.split \
                    or label[i] != m.label:
                continue
            seen.add((m.id, m.source))
            idx.append(i)
            rows.append({**frame.iloc[i].to_dict(), "source": m.source, "path": m.path})
        return np.asarray(idx, dtype=np.int64), pd.DataFrame(rows, columns=frame.columns)

    # ------------------------------------------------------------------ facts
    @property
    def preset_name(self) -> str:
        return self.preset.name if self.preset else "none"

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def generators(self, split: str = "train") -> list[str]:
        """Sources with generated images in ``split``, sorted."""
        return sorted({c.source for c in self.counts if c.split == split and c.n_fake})

    def real_only_sources(self) -> list[str]:
        """Sources of the train/val splits that hold only real images (a shared real pool)."""
        side = [c for c in self.counts if c.split in TRAIN_SPLITS]
        fake = {c.source for c in side if c.n_fake}
        return sorted({c.source for c in side if c.n_real} - fake)

    def with_training(self, sources: list[str] | tuple[str, ...]) -> Experiment:
        """The same experiment trained on ``sources`` plus, for a source without real training
        images of its own, the train side's real-only sources (the cross-generator matrix)."""
        own_real = {c.source for c in self.counts if c.split in TRAIN_SPLITS and c.n_real}
        chosen = list(dict.fromkeys(sources))
        if any(s not in own_real for s in chosen):
            chosen += [s for s in self.real_only_sources() if s not in chosen]
        return dataclasses.replace(self, train_sources=tuple(chosen), train_error="",
                                   preset_missing=())


def _known_sources(rows: pd.DataFrame) -> list[str]:
    return sorted(set(rows["source"]))


def _check_named(key: str, names: list[str], known: list[str]) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:  # the wording ``cached_features.select`` has always used
        raise ValueError(f"protocol names unknown source(s) {unknown}; known: {known} "
                         f"(protocol.{key})")


def _counts(rows: pd.DataFrame) -> tuple[SourceRows, ...]:
    if not len(rows):
        return ()
    g = rows.groupby(["source", "split"], sort=True)["label"]
    real = g.apply(lambda s: int((s == 0).sum()))
    fake = g.apply(lambda s: int((s == 1).sum()))
    return tuple(SourceRows(str(src), str(split), int(real[(src, split)]),
                            int(fake[(src, split)])) for src, split in real.index)


def _members(manifest: pd.DataFrame) -> tuple[Member, ...]:
    if "status" not in manifest:
        return ()
    dups = manifest[manifest["status"] == "duplicate"]
    return tuple(Member(str(r.id), str(r.source), str(r.split), int(r.label), str(r.path))
                 for r in dups.itertuples())


def seeds_of(params: Params) -> tuple[int, ...]:
    """``train.seeds``, or the single ``train.seed`` when that list is empty."""
    return tuple(params.train.seeds) or (params.train.seed,)


def with_seed(params: Params, seed: int) -> Params:
    """``params`` with ``train.seed`` set to ``seed`` (one run of a several-seed experiment)."""
    return dataclasses.replace(params, train=dataclasses.replace(params.train, seed=seed))


def resolve_experiment(params: Params, manifest: str | Path | pd.DataFrame,
                       heads: tuple[str, ...] | None = None) -> Experiment:
    """Decide the experiment from the params and the manifest (a path, its frame, or the
    frame of a ``FeatureSet``: usable rows only, so no duplicate members).

    Raises ``ValueError`` for a ``protocol.train_sources`` / ``test_sources`` name that no
    usable image has. A preset none of whose training sources is present is recorded
    (``train_error``): training then fails with that message, scoring still works.
    """
    full = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    ok = full[full["status"] == "ok"] if "status" in full else full  # a features' frame: ok

    known = _known_sources(ok)
    preset = get_preset(params.protocol.preset)
    train_side = ok.loc[ok["split"].isin(TRAIN_SPLITS), "source"]
    error, missing = "", ()
    if preset is None:
        _check_named("train_sources", params.protocol.train_sources, known)
        _check_named("test_sources", params.protocol.test_sources, known)
        train = tuple(params.protocol.train_sources) or None
        test = tuple(params.protocol.test_sources) or None
    else:
        side = sorted(set(train_side))
        found, absent = preset_training(preset, side)
        train, test, missing = tuple(found), None, tuple(absent)
        if not found:
            error = (f"protocol.preset {preset.name!r} trains on {', '.join(preset.training)}, "
                     f"but none of them is among the training sources found "
                     f"({', '.join(side) or 'none'}); check data.roots and the roots' roles")
    heads = tuple(params.compare.heads) if heads is None else tuple(heads)
    return Experiment(preset, train, error, missing, test, seeds_of(params), heads,
                      _counts(ok), _members(full))


def matrix_sources(exp: Experiment, wanted: list[str]) -> list[str]:
    """The training sources of the cross-generator matrix: every source with generated
    training images, or those of ``wanted`` (matched without case or punctuation)."""
    candidates = exp.generators("train")
    if not candidates:
        raise ValueError("the cross-generator matrix needs generated training images: no "
                         "source has fake images in the train split")
    if not wanted:
        return candidates
    found, missing = match_sources(wanted, candidates)
    if missing:
        raise ValueError(f"matrix.train_sources: {', '.join(missing)} has no generated training "
                         f"images; sources that have: {', '.join(candidates)}")
    return found
