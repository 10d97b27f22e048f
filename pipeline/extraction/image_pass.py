"""One decode per image: every pixel-derived input of extraction comes from a single pass.

A worker process reads an image's bytes, checks them against the manifest's content id,
decodes them once and, for each treatment the image is needed under (the file as it is,
``protocol.train_reencode``, each degradation), derives from those pixels what each requested
recipe's models need (``Recipe.derive``: the composite recipe's patch selection, 224 px
composites and 384 px BLIP resize; the baseline recipes' 224 px crops). Only those fixed-size
arrays cross back to the main process, where the models run on the GPU while the workers decode
the next images (``prefetch``).

Workers run torch with one thread each (``worker_init``); the main process's thread count is
set by ``nsnet.runtime.configure_threads``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from nsnet.data import degradations
from nsnet.data.images import decode_data, read_bytes
from nsnet.data.manifest import content_id
from nsnet.registry import RECIPES

# Counts decodes in this process (the benchmark reads it with ``num_workers=0``).
DECODES = {"count": 0}


class StaleManifest(RuntimeError):
    """An image changed on disk after ``nsnet index`` recorded it."""


class ImageWork(NamedTuple):
    """One image of a shard and the treatments it is needed under (one decode for all).

    ``cells[j]`` / ``captions[j]`` carry what the store already holds for treatment j when it
    is not recomputed (the selection a new patch order needs, the caption a new text embedding
    needs), else None.
    """

    image_id: str
    path: bytes  # the file (absolute, or relative to the working directory)
    treatments: tuple[str, ...]
    cells: tuple[np.ndarray | None, ...]
    captions: tuple[str | None, ...]


@dataclass(frozen=True)
class PassPlan:
    """What one pass derives from each decoded image, for every treatment: each recipe's pixel
    task (``Recipe.task``), by recipe name."""

    max_pixels: int
    tasks: tuple[tuple[str, Any], ...] = ()


class ImagePass(torch.utils.data.Dataset):
    """Item ``i``: a list with one dict per treatment of image ``i`` (one decode), the arrays
    every task's recipe derives (``Recipe.derive``)."""

    def __init__(self, images: Sequence[ImageWork], plan: PassPlan) -> None:
        self.images, self.plan = list(images), plan

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[dict[str, np.ndarray]]:
        work, plan = self.images[i], self.plan
        path = os.fsdecode(work.path)
        data = read_bytes(path)
        if content_id(data) != work.image_id:
            raise StaleManifest(f"{path} changed since it was indexed; rerun `nsnet index`")
        rgb, _ = decode_data(data, path, plan.max_pixels)  # warnings name the file
        DECODES["count"] += 1
        return [self._derive(rgb, work, j) for j in range(len(work.treatments))]

    def _derive(self, rgb: np.ndarray, work: ImageWork, j: int) -> dict[str, np.ndarray]:
        treatment = work.treatments[j]
        if treatment:
            rgb = degradations.apply(treatment, rgb)
        item: dict[str, np.ndarray] = {}
        for name, task in self.plan.tasks:
            item.update(RECIPES.get(name).derive(task, rgb, work, j))
        return item


def collate(items: list[list[dict[str, np.ndarray]]]) -> dict[str, torch.Tensor]:
    """Flatten the images' per-treatment dicts into one batch of samples (stacked fields)."""
    samples = [s for item in items for s in item]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def worker_init(_: int) -> None:
    """Decoding workers: one torch thread each, so N workers use N cores, not N x cores."""
    torch.set_num_threads(1)


def batches(dataset: ImagePass, batch_size: int, workers: int, pin: bool = False,
            prefetch: int = 4, fetch: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """Model batches of exactly ``batch_size`` samples (the last one smaller), decoded in
    ``workers`` processes.

    Workers fetch small groups of ``fetch`` images (``prefetch`` groups ahead each) that the
    main process joins into model batches: a worker handing over a whole GPU batch of 256 would
    make the models wait seconds at the start of every shard. Inside a daemonic process (a dask
    worker) child processes are not allowed, so decoding runs in-process there.
    """
    if workers and multiprocessing.current_process().daemon:
        workers = 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=max(1, min(fetch, batch_size)) if workers else batch_size,
        num_workers=workers, collate_fn=collate, pin_memory=pin, persistent_workers=False,
        worker_init_fn=worker_init, prefetch_factor=prefetch if workers else None,
    )
    pending: list[dict[str, torch.Tensor]] = []
    size = 0
    for part in loader:
        pending.append(part)
        size += len(next(iter(part.values())))
        while size >= batch_size:
            joined = _join(pending)
            yield _pinned({k: v[:batch_size] for k, v in joined.items()}, pin)
            rest = {k: v[batch_size:] for k, v in joined.items()}
            size -= batch_size
            pending = [rest] if size else []
    if size:
        yield _pinned(_join(pending), pin)


def _join(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _pinned(batch: dict[str, torch.Tensor], pin: bool) -> dict[str, torch.Tensor]:
    return {k: v.pin_memory() for k, v in batch.items()} if pin else batch
