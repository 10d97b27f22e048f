"""One decode per image: every pixel-derived input of extraction comes from a single pass.

A worker process reads an image's bytes, checks them against the manifest's content id,
decodes them once and derives from those pixels what the models need: the patch selection
(cells and entropies, a few hundred bytes), the 224 px composite for CLIP and the uint8
384 px resize for BLIP. Only those fixed-size arrays cross back to the main process, where the
models run on the GPU while the workers decode the next batches (``prefetch``).

Workers run torch with one thread each (``worker_init``); the main process's thread count is
set by ``pipeline.runtime.configure_threads``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.data import degradations
from pipeline.data.images import decode_data, read_bytes
from pipeline.data.manifest import content_id
from pipeline.extraction.patch_selection import PatchSpec, composite, select_cells, view_cells

# Counts decodes in this process (the benchmark reads it with ``num_workers=0``).
DECODES = {"count": 0}


class StaleManifest(RuntimeError):
    """An image changed on disk after ``nsnet index`` recorded it."""


class BlipResize:
    """BLIP's own image processor split in two: the resize (in a decoding worker, kept as
    uint8, a quarter of the bytes of float32) and the rescale + normalisation (main process, on
    the model's device where the processor supports it). Bit-identical to calling the processor
    on the decoded image, whichever backend the installed transformers uses."""

    def __init__(self, image_processor: Any) -> None:
        self.processor = image_processor

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, S, S) resized, uint8 when the values are whole numbers."""
        x = self.processor(images=[rgb], do_rescale=False, do_normalize=False,
                           return_tensors="pt")["pixel_values"][0]
        if x.dtype != torch.uint8 and bool((x == x.round()).all()) and x.min() >= 0 \
                and x.max() <= 255:
            x = x.to(torch.uint8)
        return x.numpy()

    def normalise(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, 3, S, S) resized batch -> ``pixel_values`` float32 on ``device``."""
        batch = batch.to(device, non_blocking=True)
        try:
            out = self.processor(images=batch, do_resize=False, return_tensors="pt",
                                 device=device)["pixel_values"]
        except (TypeError, ValueError):  # processors without a device option
            out = self.processor(images=batch.cpu(), do_resize=False,
                                 return_tensors="pt")["pixel_values"]
        return out.to(device, non_blocking=True)


@dataclass(frozen=True)
class PassPlan:
    """What one pass derives from each decoded image."""

    spec: PatchSpec
    max_pixels: int
    select: bool = True  # compute cells/entropies (False: they come in ``cells``)
    composite: bool = True  # build the CLIP composite
    blip: BlipResize | None = None  # BLIP input, when captions are computed
    degradation: str = ""  # a pipeline.data.degradations name applied after decoding
    views: int = 1  # patch-order views: K - 1 more composites per image (``patches.views``)


class ImagePass(torch.utils.data.Dataset):
    """Item ``i``: ``{"cells", "entropy", "composite", "blip"}`` of image ``i`` (one decode),
    plus ``"views"`` (K - 1, side, side, 3), the composites of views 1..K-1, when K > 1."""

    def __init__(self, ids: list[str], paths: list[bytes], plan: PassPlan,
                 cells: np.ndarray | None = None, per_image: list[str] | None = None) -> None:
        self.ids, self.paths, self.plan, self.cells = ids, paths, plan, cells
        self.per_image = per_image  # a degradation per image (protocol.train_reencode)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        plan = self.plan
        path = os.fsdecode(self.paths[i])
        data = read_bytes(path)
        if content_id(data) != self.ids[i]:
            raise StaleManifest(f"{path} changed since it was indexed; rerun `nsnet index`")
        rgb, _ = decode_data(data, path, plan.max_pixels)  # warnings name the file
        DECODES["count"] += 1
        if plan.degradation:
            rgb = degradations.apply(plan.degradation, rgb)
        if self.per_image and self.per_image[i]:
            rgb = degradations.apply(self.per_image[i], rgb)
        item: dict[str, np.ndarray] = {}
        if plan.select:
            item["cells"], item["entropy"] = select_cells(rgb, self.ids[i], plan.spec)
        if plan.composite:
            cells = item["cells"] if plan.select else self.cells[i]  # type: ignore[index]
            item["composite"] = composite(rgb, cells, plan.spec)
            if plan.views > 1:
                more = view_cells(cells, self.ids[i], plan.views)[1:]
                item["views"] = np.stack([composite(rgb, c, plan.spec) for c in more])
        if plan.blip is not None:
            item["blip"] = plan.blip.resize(rgb)
        return item


def collate(items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack each field into one tensor (pinned by the loader when ``pin`` is set)."""
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


def worker_init(_: int) -> None:
    """Decoding workers: one torch thread each, so N workers use N cores, not N x cores."""
    torch.set_num_threads(1)


def batches(dataset: ImagePass, batch_size: int, workers: int, pin: bool = False,
            prefetch: int = 4, fetch: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """Model batches of ``batch_size`` items decoded in ``workers`` processes.

    Workers fetch small groups of ``fetch`` images (``prefetch`` groups ahead each) that the
    main process joins into model batches: a worker handing over a whole GPU batch of 256 would
    make the models wait seconds at the start of every shard. Inside a daemonic process (a dask
    worker) child processes are not allowed, so decoding runs in-process there.
    """
    if workers and multiprocessing.current_process().daemon:
        workers = 0
    group = batch_size  # a divisor of the batch size, so model batches are exactly batch_size
    if workers:
        group = max(d for d in range(1, min(fetch, batch_size) + 1) if batch_size % d == 0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=group, num_workers=workers, collate_fn=collate,
        pin_memory=pin, persistent_workers=False, worker_init_fn=worker_init,
        prefetch_factor=prefetch if workers else None,
    )
    pending: list[dict[str, torch.Tensor]] = []
    size = 0
    for part in loader:
        pending.append(part)
        size += len(next(iter(part.values())))
        if size >= batch_size:
            yield _join(pending, pin)
            pending, size = [], 0
    if pending:
        yield _join(pending, pin)


def _join(parts: list[dict[str, torch.Tensor]], pin: bool) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return {k: v.pin_memory() for k, v in out.items()} if pin else out
