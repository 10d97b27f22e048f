"""Folder layouts of the benchmarks: labels, source (generator) names and official splits.

Supported (``data.layout``, or per root ``data.roots[i].layout``):

* ``real_fake``  ``<root>/[<split>/]{real,fake}/[<source>/]...`` (also ``0_real/1_fake``).
  Reals in ``real/`` get the source ``real``; fakes get their subfolder name (``fake`` if none).
* ``genimage``   ``<root>/<generator>/[<subset>/]{train,val}/{nature,ai}/...``. The generator is
  named by the first folder below the root, or by a canonical name (``SDv1.4``, ``Midjourney``,
  ...) when a folder on the way matches one of GenImage's eight generators. GenImage's official
  ``val`` folders are its test set, so they become our ``test`` split.
* ``ufd``        ``<root>/[<split>/]<generator>/[<class>/]{0_real,1_fake}/...``: the
  UniversalFakeDetect test set (``progan/airplane/0_real``, ``diffusion_datasets/laion/0_real``,
  ``diffusion_datasets/dalle/1_fake``) and the ProGAN training set (``progan_train/<class>/...``,
  ``progan_val/<class>/...``, or ``train/[progan/]<class>/...``). The source is the first folder
  below the root and split folder, skipping the archives' container folders
  (``CNN_synth_testset``, ``diffusion_datasets``, ``datasets``): the generator (or real pool) in
  the test set, the object class in the ProGAN training set (so ``protocol.train_sources: [car,
  cat, chair, horse]`` picks AIGIBench's 4-class setting out of the 20 classes).
* ``aigibench``  as ``ufd``. AIGIBench (Li et al. 2025, github.com/HorizonTEL/AIGIBench) ships
  ``train/{car,cat,chair,horse,sdv1.4}/{0_real,1_fake}``, ``val/<...>/{0_real,1_fake}`` and
  ``test/<subset>/{0_real,1_fake}`` (25 subsets: ProGAN, R3GAN, FLUX1-dev, CommunityAI, ...).
* ``auto``       picks one of the above from the folder names found near the root.

The walk follows directory symlinks but never visits a directory twice (no symlink loops).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nsnet.data.images import IMAGE_EXTENSIONS
from nsnet.registry import LAYOUTS as LAYOUT_NAMES

REAL_NAMES = {"real", "0_real", "nature", "reals", "0"}
FAKE_NAMES = {"fake", "1_fake", "ai", "fakes", "1", "generated", "synthetic"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
               # CNNDetection's ProGAN training and validation archives extract to these
               "progan_train": "train", "progan_val": "val"}
# Folders of the distributed archives that hold sources without being one (ufd, aigibench):
# CNNDetection's test archive, UFD's diffusion archive, the usual download parents.
CONTAINER_NAMES = {"cnn_synth_testset", "diffusion_datasets", "datasets", "dataset"}
TEST_CONTAINERS = {"cnn_synth_testset", "diffusion_datasets"}  # test-only archives
LAYOUTS = ("real_fake", "genimage", "ufd", "aigibench")
DETECT_DEPTH = 6  # folder levels below the root inspected by ``detect_layout``
# What a root of each layout holds, for the messages about an empty root (``auto``: the first).
LAYOUT_EXAMPLES = {
    "real_fake": ("real/", "fake/<generator>/"),
    "genimage": ("<generator>/train/nature/", "<generator>/train/ai/"),
    "ufd": ("<generator>/0_real/", "<generator>/1_fake/"),
    "aigibench": ("train/<source>/0_real/", "train/<source>/1_fake/"),
}

for _name in ("auto", *LAYOUTS):  # auto: detected per root (``detect_layout``)
    LAYOUT_NAMES.register(_name, LAYOUT_EXAMPLES.get(_name, ()))

# GenImage's eight generators, matched on a folder name reduced to lowercase letters and digits
# (``stable_diffusion_v_1_4`` and ``imagenet_ai_0419_sdv4`` both give ``SDv1.4``).
GENIMAGE_NAMES = (
    (re.compile(r"midjourney"), "Midjourney"),
    (re.compile(r"(sdv?1?4|diffusionv?14)$"), "SDv1.4"),
    (re.compile(r"(sdv?1?5|diffusionv?15)$"), "SDv1.5"),
    (re.compile(r"adm$"), "ADM"),
    (re.compile(r"glide"), "GLIDE"),
    (re.compile(r"wukong"), "Wukong"),
    (re.compile(r"vqdm"), "VQDM"),
    (re.compile(r"biggan"), "BigGAN"),
)


class LayoutError(ValueError):
    """A data root does not exist or does not look like any supported layout."""


@dataclass(frozen=True)
class Entry:
    path: str  # root/relpath as listed (may contain surrogate escapes for non-UTF-8 names)
    label: int  # 0 real, 1 fake
    source: str  # generator or dataset name
    split: str | None  # official split if the layout gives one


@dataclass(frozen=True)
class WalkError:
    """A folder below a root that could not be listed (its files are not in the manifest)."""

    path: str  # printable (non-UTF-8 bytes backslash-escaped)
    error: str


def walk_files(root: Path, errors: list[WalkError] | None = None) -> Iterator[Path]:
    """All files below ``root`` in sorted order, following symlinks once (loop-safe).

    Folders that cannot be listed (permissions, I/O errors) are appended to ``errors`` rather
    than skipped silently.
    """
    seen: set[tuple[int, int]] = set()

    def failed(exc: OSError) -> None:
        if errors is not None:
            name = os.fsencode(exc.filename or "").decode("utf-8", errors="backslashreplace")
            errors.append(WalkError(name, f"{type(exc).__name__}: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            failed(exc)
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _label_index(parts: tuple[str, ...]) -> tuple[int, int] | None:
    """Index and label of the last folder name that names a label."""
    for i in range(len(parts) - 1, -1, -1):
        name = parts[i].lower()
        if name in REAL_NAMES:
            return i, 0
        if name in FAKE_NAMES:
            return i, 1
    return None


def _folder_pairs(root: Path) -> set[tuple[str, str]]:
    """(parent, name) of every folder within ``DETECT_DEPTH`` levels of ``root``, lowercased."""
    pairs: set[tuple[str, str]] = set()
    base = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        here = Path(dirpath)
        parent = here.name.lower() if len(here.parts) > base else ""
        pairs.update((parent, d.lower()) for d in dirnames)
        if len(here.parts) - base >= DETECT_DEPTH - 1:
            dirnames[:] = []
    return pairs


def folder_pairs_of(rel_dirs: Iterable[tuple[str, ...]]) -> set[tuple[str, str]]:
    """(parent, name) of the folders on the way to files (each file's folder names relative to
    the root), within ``DETECT_DEPTH`` levels, lowercased: ``detect_layout``'s evidence from a
    listing instead of a walk."""
    pairs: set[tuple[str, str]] = set()
    for dirs in set(rel_dirs):
        low = [d.lower() for d in dirs[:DETECT_DEPTH]]
        if low:
            pairs.update(zip(["", *low[:-1]], low, strict=True))
    return pairs


def detect_layout(root: Path | None = None, pairs: set[tuple[str, str]] | None = None) -> str:
    """Guess the layout of ``root`` (or of the given folder ``pairs``) from its folder names."""
    if pairs is None:
        pairs = _folder_pairs(Path(root))  # type: ignore[arg-type]
    names = {name for _, name in pairs}
    if any(p in ("train", "val") and n in ("ai", "nature") for p, n in pairs):
        return "genimage"
    if {"0_real", "1_fake"} & names:
        return "ufd"
    if {"real", "fake"} & names:
        return "real_fake"
    if {"ai", "nature"} & names:
        return "genimage"
    raise LayoutError(
        f"{root or 'data root'}: no label folders found. Expected real/ + fake/, 0_real/ + "
        "1_fake/ (UFD, AIGIBench) or <generator>/{train,val}/{nature,ai}/ (GenImage). Set "
        "data.layout or reorganise the folder."
    )


def genimage_name(folders: list[str]) -> str | None:
    """Canonical GenImage generator name for the first folder that matches one."""
    for folder in folders:
        key = re.sub(r"[^a-z0-9]", "", folder.lower())
        for pattern, name in GENIMAGE_NAMES:
            if pattern.search(key):
                return name
    return None


def _ufd_split(before: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """(split, source folders) of a ufd/aigibench path: a split folder counts only before the
    first source folder, so ProGAN's class ``train`` (``progan_train/train/0_real``,
    ``progan/train/1_fake``) is a class, not a split; container folders are dropped, and the
    test-only archives (``CNN_synth_testset``, ``diffusion_datasets``) make their files test."""
    split, named = None, []
    for p in before:
        low = p.lower()
        if low in CONTAINER_NAMES:
            if split is None and not named and low in TEST_CONTAINERS:
                split = "test"
            continue
        if split is None and not named and low in SPLIT_NAMES:
            split = SPLIT_NAMES[low]
        else:
            named.append(p)
    return split, named


def classify(rel_dirs: tuple[str, ...], layout: str) -> tuple[int, str, str | None] | None:
    """Label, source and official split of a file from its folder names (relative to root)."""
    found = _label_index(rel_dirs)
    if found is None:
        return None
    idx, label = found
    before = rel_dirs[:idx]
    after = rel_dirs[idx + 1:]
    split = next((SPLIT_NAMES[p.lower()] for p in before if p.lower() in SPLIT_NAMES), None)
    named = [p for p in before if p.lower() not in SPLIT_NAMES]
    if layout == "genimage":
        source = genimage_name(named) or (named[0] if named else "genimage")
        if split == "val":  # GenImage's official val folders are its test set
            split = "test"
    elif layout in ("ufd", "aigibench"):
        split, named = _ufd_split(before)
        if split in ("train", "val") and len(named) > 1 and named[0].lower() == "progan":
            named = named[1:]  # UFD's training tree: train/progan/<class>/{0_real,1_fake}
        source = named[0] if named else (after[0] if after else rel_dirs[idx].lower())
    else:
        source = named[0] if named else (after[0] if after else ("real" if label == 0 else "fake"))
    return label, source, split


def entries_of(root: str, relpaths: Sequence[bytes], layout: str = "auto",
               unlabelled: list[int] | None = None) -> Iterator[tuple[int, Entry]]:
    """(position, entry) of every listed file of ``root`` that sits in a label folder.

    ``relpaths`` are the files' paths relative to the root (``nsnet.data.listing``). Files of
    every name are entries (the index gives those we do not decode the status
    ``unsupported_format``), so none disappears without a trace; the positions of files outside
    any label folder are appended to ``unlabelled``.
    """
    rel_dirs = [tuple(os.fsdecode(r).split(os.sep)[:-1]) for r in relpaths]
    if layout == "auto":
        layout = detect_layout(Path(root), pairs=folder_pairs_of(rel_dirs))
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    for i, dirs in enumerate(rel_dirs):
        got = classify(dirs, layout)
        if got is None:
            if unlabelled is not None:
                unlabelled.append(i)
            continue
        label, source, split = got
        path = os.fsdecode(os.path.join(os.fsencode(root), relpaths[i]))
        yield i, Entry(path=path, label=label, source=source, split=split)
