"""Folder layouts of the benchmarks: labels, source (generator) names and official splits.

Supported (``data.layout``):

* ``real_fake``  ``<root>/[<split>/]{real,fake}/[<source>/]...`` (also ``0_real/1_fake``)
* ``genimage``   ``<root>/<generator>/{train,val}/{nature,ai}/...`` (official val is the test set)
* ``ufd``        ``<root>/[<split>/]<generator>/[<class>/]{0_real,1_fake}/...``
* ``aigibench``  like ``ufd`` (``<subset>/[<class>/]{0_real,1_fake}``), subsets named by folder
* ``auto``       picks one of the above from the folder names found.

The walk follows directory symlinks but never visits a directory twice (no symlink loops).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.images import IMAGE_EXTENSIONS

REAL_NAMES = {"real", "0_real", "nature", "reals", "0"}
FAKE_NAMES = {"fake", "1_fake", "ai", "fakes", "1", "generated", "synthetic"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LAYOUTS = ("real_fake", "genimage", "ufd", "aigibench")


class LayoutError(ValueError):
    """A data root does not exist or does not look like any supported layout."""


@dataclass(frozen=True)
class Entry:
    path: str  # absolute path (may contain surrogate escapes for non-UTF-8 names)
    label: int  # 0 real, 1 fake
    source: str  # generator or dataset name
    split: str | None  # official split if the layout gives one


def walk_files(root: Path) -> Iterator[Path]:
    """All files below ``root`` in sorted order, following symlinks once (loop-safe)."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
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


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` from its folder names."""
    names: set[str] = set()
    for depth, (_dirpath, dirnames, _) in enumerate(os.walk(root)):
        names.update(d.lower() for d in dirnames)
        if depth > 2000:
            break
    if {"ai", "nature"} & names:
        return "genimage"
    if {"0_real", "1_fake"} & names:
        return "ufd"
    if {"real", "fake"} & names:
        return "real_fake"
    raise LayoutError(
        f"{root}: no label folders found. Expected real/ + fake/, 0_real/ + 1_fake/ (UFD, "
        "AIGIBench) or <generator>/{train,val}/{nature,ai}/ (GenImage). Set data.layout or "
        "reorganise the folder."
    )


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
        source = named[0] if named else "genimage"
        if split == "val":  # GenImage's official val folders are its test set
            split = "test"
    elif layout in ("ufd", "aigibench"):
        source = named[0] if named else (after[0] if after else rel_dirs[idx].lower())
    else:
        source = named[0] if named else (after[0] if after else ("real" if label == 0 else "fake"))
    return label, source, split


def iter_entries(root: str | os.PathLike[str], layout: str = "auto") -> Iterator[Entry]:
    """Every image-named file below ``root`` with its label, source and official split."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"data root {root} does not exist or is not a folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    for path in walk_files(root):
        if not is_image_name(path):
            continue
        rel_dirs = path.relative_to(root).parts[:-1]
        got = classify(rel_dirs, layout)
        if got is None:
            continue
        label, source, split = got
        yield Entry(path=str(path.absolute()), label=label, source=source, split=split)
