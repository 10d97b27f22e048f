"""What training will need, checked on the manifest before any expensive stage runs.

A tree with only real (or only generated) images indexes, audits and extracts without a
complaint and fails at ``train``, after the hours of extraction. ``training_problems`` looks at
the manifest's usable rows the way ``nsnet train`` will select them (the preset's or
``protocol.train_sources``' sources, the train and val splits) and says, in words and counts,
what is missing: both labels in the train split, and both in the val split when the decision
(``evaluate.threshold`` rule or ``evaluate.calibration``) is fit there. ``validation_warnings``
says when the validation rows, though present, are too few to choose the epoch and the
decision on (fewer than ``MIN_VAL_IMAGES`` of a label, or of a training generator's images).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nsnet.config import Params, parse_threshold
from nsnet.data.experiment import resolve_experiment

LABELS = {0: "real", 1: "generated"}
# Fewest validation images of each label, and generated ones of each training generator, to
# choose the epoch and the decision on: below 20, one image moves that label's validation
# accuracy by 5 points or more, and a generator weighs next to nothing in the choice.
MIN_VAL_IMAGES = 20


def label_counts(rows: pd.DataFrame) -> str:
    """``120 real and 0 generated`` (plain numbers, whatever the column's dtype)."""
    counts = rows["label"].value_counts()
    return " and ".join(f"{int(counts.get(k, 0))} {name}" for k, name in LABELS.items())


def _both(rows: pd.DataFrame) -> bool:
    return all(int((rows["label"] == k).sum()) > 0 for k in LABELS)


def _where(params: Params, sources: list[str] | None) -> str:
    roots = ", ".join(r.path for r in params.data.roots)
    if params.protocol.preset != "none":
        chosen = f"protocol.preset {params.protocol.preset}: {', '.join(sources or [])}"
    else:
        chosen = f"protocol.train_sources: {', '.join(sources) if sources else 'all'}"
    return f"data.roots: {roots}; {chosen}"


def _fitted_on_val(params: Params) -> list[str]:
    """The decision's parts fit on the validation split (a threshold rule, a calibration)."""
    rule = parse_threshold(params.evaluate.threshold)
    fitted = [f"evaluate.threshold={rule.text}"] if rule.kind != "fixed" else []
    if params.evaluate.calibration != "none":
        fitted.append(f"evaluate.calibration={params.evaluate.calibration}")
    return fitted


def training_problems(manifest: pd.DataFrame, params: Params) -> list[str]:
    """Why ``nsnet train`` would fail on this manifest (empty when it has what it needs)."""
    ok = manifest[manifest["status"] == "ok"]
    side = ok[ok["split"].isin(["train", "val"])]
    known = sorted(set(side["source"].astype(str)))
    missing = sorted(set(params.protocol.train_sources) - set(known))
    if params.protocol.preset == "none" and missing:
        return [f"protocol.train_sources names {', '.join(missing)}, not found among the "
                f"training sources ({', '.join(known)})"]
    try:  # the rows `nsnet train` will select (nsnet.data.experiment decides them)
        exp = resolve_experiment(params, manifest)
    except ValueError as exc:
        return [str(exc)]
    if exp.train_error:
        return [exp.train_error]
    sources = list(exp.train_sources) if exp.train_sources is not None else None
    train, val = side[exp.train_mask(side)], side[exp.val_mask(side)]
    problems = []
    if len(train) < 2 or not _both(train):
        problems.append(
            f"training needs real and generated images in the train split; it has "
            f"{label_counts(train)} ({_where(params, sources)}). Add the missing kind (e.g. "
            "a fake/<generator>/ folder beside real/), or widen protocol.train_sources")
    fitted = _fitted_on_val(params)
    if fitted and not problems and not _both(val):
        problems.append(
            f"{' and '.join(fitted)} are fit on the validation split, which has "
            f"{label_counts(val)}; add images (each data.split.val share of a folder lands "
            "there) or use a fixed evaluate.threshold and evaluate.calibration: none")
    return problems


def validation_warnings(manifest: pd.DataFrame, params: Params) -> list[str]:
    """One line per validation shortfall of the training rows (empty when val is big enough):
    fewer than ``MIN_VAL_IMAGES`` real or generated images, or generated images of a training
    generator (with the counts, and how to get more)."""
    ok = manifest[manifest["status"] == "ok"]
    try:
        exp = resolve_experiment(params, manifest)
    except ValueError:
        return []  # training_problems says what is wrong
    if exp.train_error:
        return []
    val = ok[exp.val_mask(ok)]
    more = (f"raise data.split.val (now {params.data.split.val:g}), which sends more of each "
            "folder without a val/ folder of its own to val")
    chosen = " and ".join(["the epoch", *_fitted_on_val(params)])
    warnings = []
    n_real, n_fake = (int((val["label"] == k).sum()) for k in LABELS)
    if min(n_real, n_fake) < MIN_VAL_IMAGES:
        warnings.append(f"val has {label_counts(val)} images: too few (under {MIN_VAL_IMAGES} "
                        f"of each) to choose {chosen} reliably; add images, or {more}")
    picked = set(exp.train_sources) if exp.train_sources is not None else None
    fakes = {(c.source, c.split): c.n_fake for c in exp.counts}
    for source in exp.generators("train"):
        if picked is not None and source not in picked:
            continue
        n_val = fakes.get((source, "val"), 0)
        if n_val < MIN_VAL_IMAGES:
            warnings.append(
                f"generator {source} has {n_val} generated image{'' if n_val == 1 else 's'} "
                f"in val ({fakes[(source, 'train')]} in train): too few (under "
                f"{MIN_VAL_IMAGES}) for its images to count in choosing {chosen}; add "
                f"{source} images, or {more}")
    return warnings


def check_training(manifest: str | Path, params: Params) -> list[str]:
    """Raise ``NotTrainable`` (one message, every problem) when training would fail; else
    return the ``validation_warnings``."""
    from nsnet.data.manifest import read_manifest

    frame = read_manifest(manifest)
    problems = training_problems(frame, params)
    if problems:
        raise NotTrainable(f"{manifest}: " + "; ".join(problems))
    return validation_warnings(frame, params)


class NotTrainable(ValueError):
    """The indexed images cannot train a detector with the current params."""
