"""Cached features joined with the manifest, ready for training and evaluation.

No image is opened here: the heads see only the feature store (``cache/features``), gathered by
image id in manifest order, so a store grown an image at a time trains exactly like one built
from scratch. Features are gathered into memory once (float32); when they would not fit
comfortably in RAM they are gathered into a float16 memory map instead.

With ``patches.views: K`` > 1 the image features are (n, K, d), one per patch order (view 0
first); a cache with a 2-D ``image`` dataset has one view. ``FeatureSet.first_views(k)`` keeps
the leading k views (k = 1 gives the (n, d) features of view 0).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nsnet.cache_store import FeatureStore, Part, StoreError, encode_ids, require
from nsnet.config import Params
from nsnet.data.manifest import read_manifest
from nsnet.extraction.settings import ExtractSettings, PartSet, kind_base
from nsnet.registry import RECIPES


class MappedRows:
    """Rows ``index`` of a memory-mapped (n, d) tensor, gathered only when indexed.

    Behaves like the (len(index), d) tensor for what the heads need: ``rows[i:j]``,
    ``rows[idx]`` (returns a real tensor of those rows), ``len``, ``shape`` and ``dtype``. Taking
    a subset composes indices, so selecting the training split never copies the cache.
    """

    def __init__(self, base: torch.Tensor, index: torch.Tensor, views: int | None = None
                 ) -> None:
        self.base, self.index = base, index
        self.views = views  # (n, K, d) base: keep the leading ``views`` (1: view 0 as (n, d))

    def _cut(self, out: torch.Tensor) -> torch.Tensor:
        if self.views is None:
            return out
        return out[..., 0, :] if self.views == 1 else out[..., :self.views, :]

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        rows = self.index[key]
        if rows.dim() == 0:
            return self._cut(self.base[rows])
        order = rows.argsort()  # read the mapped file in ascending order, then restore order
        out = torch.empty((len(rows), *self.base.shape[1:]), dtype=self.base.dtype)
        out[order] = self.base[rows[order]]
        return self._cut(out)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        inner = tuple(self.base.shape[1:])
        if self.views is not None:
            inner = inner[1:] if self.views == 1 else (self.views, *inner[1:])
        return torch.Size((len(self.index), *inner))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype


Rows = torch.Tensor | MappedRows


@dataclass
class FeatureSet:
    """Aligned rows: metadata frame plus image/text features (in-RAM float32 tensors, or
    float16 memory-mapped ``MappedRows`` when the cache is larger than memory)."""

    frame: pd.DataFrame  # id, label, source, split, path (, format)
    image: Rows
    text: Rows
    provenance: dict[str, Any]

    def subset(self, mask: np.ndarray) -> FeatureSet:
        idx = torch.from_numpy(np.flatnonzero(mask))
        return FeatureSet(self.frame[mask].reset_index(drop=True), take_rows(self.image, idx),
                          take_rows(self.text, idx), self.provenance)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.frame["label"].to_numpy().astype(np.int64))

    @property
    def n_views(self) -> int:
        """Patch-order views per image (``patches.views``); 1 for (n, d) features."""
        return self.image.shape[1] if len(self.image.shape) == 3 else 1

    @property
    def dim(self) -> int:
        return self.image.shape[-1]

    def first_views(self, k: int) -> FeatureSet:
        """The same rows with only views 0..k-1 (k = 1: view 0's (n, d) features)."""
        if not 1 <= k <= self.n_views:
            raise ValueError(f"the features hold {self.n_views} patch-order view(s), so the "
                             f"first {k} cannot be taken; raise patches.views and rerun "
                             "`nsnet extract`")
        if k == self.n_views:
            return self
        if isinstance(self.image, MappedRows):
            image: Rows = MappedRows(self.image.base, self.image.index, k)
        else:
            image = self.image[:, 0] if k == 1 else self.image[:, :k]
        patches = {**self.provenance.get("patches", {}), "views": k}
        return FeatureSet(self.frame, image, self.text, {**self.provenance, "patches": patches})

    def with_image(self, image: Rows) -> FeatureSet:
        """The same rows with other image features (e.g. a recipe's training crops)."""
        if len(image) != len(self.frame):
            raise ValueError(f"{len(image)} feature rows for {len(self.frame)} images")
        return FeatureSet(self.frame, image, self.text, self.provenance)

    @property
    def mapped(self) -> bool:
        return isinstance(self.image, MappedRows)

    def __len__(self) -> int:
        return len(self.frame)


def take_rows(rows: Rows, idx: torch.Tensor) -> Rows:
    """Rows ``idx`` (repeats allowed) of in-RAM or memory-mapped features, without reading a
    mapped cache: a ``MappedRows`` comes back as a new index into the same array."""
    if isinstance(rows, MappedRows):
        return MappedRows(rows.base, rows.index[idx], rows.views)
    return rows[idx]


def iter_blocks(rows: Rows, block: int = 65536) -> Iterator[torch.Tensor]:
    """Yield consecutive float32 blocks of ``rows`` (bounded memory for mapped caches)."""
    for i in range(0, len(rows), block):
        yield rows[i:i + block].float()


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _allocate(store: FeatureStore, shape: tuple[int, ...], name: str
              ) -> tuple[np.ndarray, bool]:
    """An array to gather features into: float32 in RAM, or a float16 memory map under the
    store's temporary folder when the float32 copy would take more than half the free RAM
    (the file is unlinked at once; the mapping keeps it until the process ends)."""
    n = int(np.prod(shape))
    if n * 4 <= 0.5 * _available_ram():
        return np.empty(shape, dtype=np.float32), False
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".f16", dir=store.tmp_dir)
    os.close(fd)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    os.unlink(path)
    return mm, True


def _rows(arr: np.ndarray, mapped: bool) -> Rows:
    if not mapped:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only view is intended
        base = torch.from_numpy(arr)
    return MappedRows(base, torch.arange(len(base)))


def feature_rows(params: Params, manifest: str | Path, degradation: str = "",
                 settings: ExtractSettings | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The manifest rows whose features a head reads, and each row's treatment.

    Clean features: every usable row, training images under ``protocol.train_reencode``.
    A degradation: the test rows, under that degradation."""
    rows = read_manifest(manifest, only_ok=True)
    if degradation:
        if degradation not in params.protocol.degradations:
            raise ValueError(f"{degradation!r} is not in protocol.degradations "
                             f"{list(params.protocol.degradations)}")
        rows = rows[rows["split"] == "test"].reset_index(drop=True)
        return rows, [degradation] * len(rows)
    settings = settings or ExtractSettings.reading(params)
    return rows, [settings.treatment(s) for s in rows["split"]]


def load_features(params: Params, manifest: str | Path, store: str | Path,
                  degradation: str = "", recipe: str = "composite",
                  settings: ExtractSettings | None = None) -> FeatureSet:
    """Gather the manifest's features of one recipe from the store, in manifest order.

    ``composite`` (NS-Net's input): the composite's CLIP embedding in each of
    ``patches.views`` patch orders, (n, d) or (n, K, d), and the caption's embedding (n, d).
    ``clip_crop`` / ``clip_layers`` / ``cozzolino`` / ``rigid`` (the other heads' inputs): crop
    0 (the test-time crop) of each image, (n, F), rows of more than one dimension flattened
    (``clip_layers``' (L, D) class tokens to L * D, ``rigid``'s (2, d) pair to 2d; the
    provenance's ``row_shape`` keeps the shape), and no text (n, 0); the training crops come
    from ``training_crops``. Which parts those are is the recipe's (``Recipe.test_kinds``,
    ``text_kind``).

    The parts read are the ones the params name (backbone, captions, patch selection, views,
    each row's treatment), so features made with other settings are never mixed in; an image
    without them is a ``StoreError`` that says to run ``nsnet extract``. ``settings``: the
    reading settings of ``recipe`` (and ``degradation``) when the caller has them already.
    """
    settings = settings or ExtractSettings.reading(
        params, recipe, degradations=(degradation,) if degradation else ())
    fs_store = _open(store)
    rows, treatments = feature_rows(params, manifest, degradation, settings)
    treats = np.asarray(treatments, dtype=object)
    ids = encode_ids(rows["id"].tolist())
    n = len(rows)
    first = settings.parts(treatments[0] if n else settings.treatment("test"))
    rec = RECIPES.get(recipe)
    kinds = rec.test_kinds(settings)
    image = _gather_into(fs_store, settings, ids, treats, kind_base(kinds[0]),
                         [lambda ps, k=k: ps[k] for k in kinds], len(kinds) > 1)
    text = (_gather_into(fs_store, settings, ids, treats, rec.text_kind,
                         [lambda ps: ps[rec.text_kind]])
            if rec.text_kind else _rows(np.zeros((n, 0), np.float32), False))
    columns = ["id", "label", "source", "split", "path"]
    columns += [c for c in ("format",) if c in rows]  # per-format metrics (shortcut check)
    frame = rows[columns].reset_index(drop=True)
    prov = _provenance(fs_store, settings, first, degradation, recipe)
    return FeatureSet(frame, image, text, prov)


def training_crops(params: Params, store: str | Path, recipe: str, frame: pd.DataFrame,
                   settings: ExtractSettings | None = None) -> Rows | None:
    """The augmented training crops (1..K-1) of a cropped recipe for ``frame``'s rows (training
    images), (n, K - 1, F) ((n, F) for one); None when the recipe keeps only crop 0 (K = 1) or
    has none (``Recipe.train_kinds``)."""
    settings = settings or ExtractSettings.reading(params, recipe)
    kinds = RECIPES.get(recipe).train_kinds(settings)
    if not kinds:
        return None
    fs_store = _open(store)
    ids = encode_ids(frame["id"].tolist())
    treats = np.asarray([settings.treatment(s) for s in frame["split"]], dtype=object)
    return _gather_into(fs_store, settings, ids, treats, recipe,
                        [lambda ps, k=k: ps[k] for k in kinds], len(kinds) > 1)


def _open(store: str | Path) -> FeatureStore:
    _refuse_previous_layout(Path(store))
    fs_store = FeatureStore(require(store, "extract"))
    fs_store.check_format()
    return fs_store


def _gather_into(store: FeatureStore, settings: ExtractSettings, ids: np.ndarray,
                 treats: np.ndarray, name: str, views: list[Any], stacked: bool = False) -> Rows:
    """Rows of the parts ``views[k](parts)`` (per treatment) for ``ids``: (n, F) for one view,
    (n, K, F) when ``stacked``; multi-dimensional rows (clip_layers) are flattened."""
    treatments = sorted(set(treats.tolist()))
    width = _width(store, settings, treatments, views[0])
    shape = (len(ids), len(views), width) if stacked else (len(ids), width)
    out, mapped = _allocate(store, shape, name)
    for treatment in treatments:
        pick = np.flatnonzero(treats == treatment)
        parts = settings.parts(treatment)
        for v, part_of in enumerate(views):
            got = _gather(store, part_of(parts), ids[pick], treatment).reshape(len(pick), -1)
            if stacked:
                out[pick, v] = got
            else:
                out[pick] = got
    return _rows(out, mapped)


def _width(store: FeatureStore, settings: ExtractSettings, treatments: list[str],
           part_of: Any) -> int:
    """Values per row of a part (from any treatment's segments)."""
    for treatment in treatments or [""]:
        shapes = store.part(part_of(settings.parts(treatment))).shapes()
        if shapes:
            return int(np.prod(shapes["emb"][0]))
    under = [t for t in treatments if t]
    raise StoreError(
        f"{store.root} has no {part_of(settings.parts('')).name} features made with the current "
        f"settings (clip {settings.clip.arch}"
        f"{', images read under ' + ', '.join(under) if under else ''}); "
        "run `nsnet extract` (or `dvc repro`)")


def _refuse_previous_layout(store: Path) -> None:
    from nsnet.extraction.store_admin import LEGACY_FILES, has_legacy

    if has_legacy(store.parent) and not FeatureStore(store).describe():
        found = [f for f in LEGACY_FILES if (store.parent / f).exists()]
        raise StoreError(
            f"{store.parent} holds features in the previous layout ({', '.join(found)}) and "
            f"{store} is empty: run `nsnet extract` (or `dvc repro`), which converts them "
            "without recomputing (`nsnet cache --migrate` does only that)")


def _gather(store: FeatureStore, part: Part, ids: np.ndarray, treatment: str) -> np.ndarray:
    try:
        return store.part(part).gather(ids, ["emb"])["emb"]
    except StoreError as exc:
        others = [d["key"] for d in store.describe() if d["part"] == part.name
                  and d["key"] != part.key]
        what = f" Those images are read under {treatment} (a treatment)." if treatment else ""
        hint = (f" The store holds {part.name} features of other settings ({', '.join(others)}"
                "): `nsnet cache` lists them." if others else "")
        raise StoreError(f"{exc}.{what}{hint}") from None


def _provenance(store: FeatureStore, settings: ExtractSettings, parts: PartSet,
                degradation: str, recipe: str = "composite") -> dict[str, Any]:
    """What made the features, each setting spelled once, as in params.yaml (``clip.arch``,
    ``caption.model``, ``patches.views``, ``protocol.train_reencode``...): the settings, the
    facts of the backbone that embedded them under ``clip`` (weights, preprocessing, width: from
    the part's ``part.json``; a part converted from the previous layout has none), the recipe
    and its row shape, the degradation and the keys of the parts read."""
    first = parts[RECIPES.get(recipe).test_kinds(settings)[0]]
    made = store.part(first).info().get("provenance", {})
    prov = settings.provenance()
    prov["clip"].update({k: made[k] for k in CLIP_FACTS if k in made})
    shapes = store.part(first).shapes()
    return {**prov, "degradation": degradation, "recipe": recipe,
            "row_shape": list(shapes["emb"][0]) if shapes else [],
            "parts": {t: {kind: p.key for kind, p in settings.parts(t).by_kind().items()}
                      for t in sorted({parts.treatment, settings.treatment("train")})}}


# What the part.json of an image part says about the CLIP model beyond its settings.
CLIP_FACTS = ("weights", "weights_blake2b", "open_clip", "mean", "std", "image_size",
              "embed_dim")


def select(fs: FeatureSet, split: str | list[str], sources: list[str] | None = None) -> FeatureSet:
    """Rows of the given split(s), restricted to ``sources`` when that list is non-empty."""
    splits = [split] if isinstance(split, str) else split
    mask = fs.frame["split"].isin(splits).to_numpy().copy()
    if sources:
        known = set(fs.frame["source"])
        unknown = sorted(set(sources) - known)
        if unknown:
            raise ValueError(f"protocol names unknown source(s) {unknown}; known: {sorted(known)}")
        mask &= fs.frame["source"].isin(sources).to_numpy()
    return fs.subset(mask)
