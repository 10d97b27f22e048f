"""Machine-dependent settings resolved in one place: devices, worker counts, torch threads,
batch sizes.

``params.yaml`` may say ``auto`` for ``data.num_workers``, ``compute.device``,
``compute.num_workers``, ``compute.torch_threads``, ``clip.batch_size``, ``caption.batch_size``
and ``train.device``; ``resolve`` turns every one of them into a value for the machine at hand
(every command calls it once, right after loading the params), so a laptop and a 16-core GPU
server both run well from the same file and no code downstream ever sees the string ``auto``.
Explicit values are always taken as given. The per-setting functions below are what
``resolve`` uses; library functions called with unresolved params use them too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from nsnet.config import Params

AUTO = "auto"

# Batch sizes by device. BLIP's greedy decoding is bound by kernel launches, so on a GPU a
# large batch is what keeps it busy; CLIP's image tower saturates earlier.
GPU_CAPTION_BATCH = {80: 256, 40: 192, 16: 96, 0: 32}  # min GiB of GPU memory -> batch
GPU_CLIP_BATCH = {40: 512, 16: 256, 0: 64}
CPU_CAPTION_BATCH = 16
CPU_CLIP_BATCH = 32
MAX_AUTO_WORKERS = 32


def cpu_count() -> int:
    """Cores this process may use (affinity/cgroup aware where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cuda(device: Any) -> bool:
    return getattr(device, "type", str(device)).startswith("cuda")


def workers(value: int | str, device: Any = "cpu") -> int:
    """Decoding worker processes: ``auto`` leaves one core to the main process."""
    if value != AUTO:
        return int(value)
    return max(0, min(MAX_AUTO_WORKERS, cpu_count() - 1))


def index_workers(value: int | str) -> int:
    """Processes that hash and probe images in ``index`` (CPU only): ``auto`` = every core."""
    return cpu_count() if value == AUTO else int(value)


def torch_threads(value: int | str, n_workers: int, device: Any = "cpu",
                  load: float | None = None) -> int:
    """Threads for torch in the main process.

    ``auto``: on a GPU a few (the GPU does the math); on a CPU the cores that the decoding
    workers leave free *and* that other processes are not using (1-minute load average), at
    least one. Oversubscribed OpenMP threads spin against each other: on a loaded 2-core
    machine two threads ran the extraction 13x slower than one.
    """
    if value != AUTO:
        return int(value)
    cores = cpu_count()
    free = max(1, cores - n_workers)
    if _cuda(device):
        return min(4, free)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    idle = max(1, int(cores - load + 0.5))
    return min(free, idle)


def configure_threads(value: int | str, n_workers: int, device: Any = "cpu") -> int:
    """Set torch's intra-op threads for this process deliberately; return the number."""
    import torch

    n = torch_threads(value, n_workers, device)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def _gpu_gib(device: Any) -> float:
    import torch

    index = torch.device(device).index or 0
    return torch.cuda.get_device_properties(index).total_memory / 2**30


def _by_memory(table: dict[int, int], gib: float) -> int:
    return next(batch for floor, batch in sorted(table.items(), reverse=True) if gib >= floor)


def caption_batch(value: int | str, device: Any) -> int:
    if value != AUTO:
        return int(value)
    return _by_memory(GPU_CAPTION_BATCH, _gpu_gib(device)) if _cuda(device) else CPU_CAPTION_BATCH


def clip_batch(value: int | str, device: Any) -> int:
    if value != AUTO:
        return int(value)
    return _by_memory(GPU_CLIP_BATCH, _gpu_gib(device)) if _cuda(device) else CPU_CLIP_BATCH


def device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name as given."""
    if name != AUTO:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(params: Params, decoding: bool = False, scheduler: str = "") -> Params:
    """``params`` with every ``auto`` replaced by this machine's value (a new object).

    ``decoding``: the command runs ``compute.num_workers`` decoding processes beside its main
    process (``extract``, ``degrade``), so torch threads are counted on the cores they leave.
    ``scheduler`` (or ``compute.scheduler``): work runs on a dask cluster, so
    ``compute.device`` stays as written and each worker resolves its own.
    """
    c = params.compute
    here = device(c.device)
    n_workers = workers(c.num_workers, here)
    compute = dataclasses.replace(
        c, device=c.device if (scheduler or c.scheduler) else here, num_workers=n_workers,
        torch_threads=torch_threads(c.torch_threads, n_workers if decoding else 0, here))
    return dataclasses.replace(
        params, compute=compute,
        data=dataclasses.replace(params.data,
                                 num_workers=index_workers(params.data.num_workers)),
        clip=dataclasses.replace(params.clip, batch_size=clip_batch(params.clip.batch_size,
                                                                    here)),
        caption=dataclasses.replace(params.caption, batch_size=caption_batch(
            params.caption.batch_size, here)),
        train=dataclasses.replace(params.train, device=device(params.train.device)))
