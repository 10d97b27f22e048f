"""Resumable sharded execution of the expensive stages, in-process or on a dask cluster.

A stage's work (the manifest's ok images, in manifest order) is cut into shards of
``compute.shard_size`` images. Each shard is computed by a top-level function and committed
atomically to ``cache/.work/<stage>-<fingerprint>/``, its file name carrying a hash of its
ids. A rerun after a crash, SIGKILL or Ctrl-C skips committed shards; shards made with other
settings live under another fingerprint and are never mixed in. When all shards exist they are
merged, in order, into the stage's output; because each shard is deterministic the merged file
is the same as an uninterrupted run's.

With a dask scheduler address the pending shards are submitted to the cluster; models are
cached per worker process (``functools.lru_cache`` in ``pipeline.backbones``), so each worker
loads a model once, not once per task.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.provenance import fingerprint


@dataclass
class Shard:
    """One unit of work: ``ids[i]`` is computed from ``inputs[i]``; result goes to ``out``."""

    stage: str
    index: int
    ids: list[str]
    inputs: list[Any]
    start: int  # row of ids[0] in the stage's full id list
    out: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What a stage run did: images computed now, shards reused, images skipped by reason."""

    stage: str
    images: int
    shards: int
    reused_shards: int
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)
    reused_parts: list[str] = field(default_factory=list)  # outputs already up to date

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        reused = f"; up to date: {', '.join(self.reused_parts)}" if self.reused_parts else ""
        return (f"{self.stage}: {self.images} images done, {skipped} skipped"
                f"{f' ({why})' if why else ''}{reused}; {self.shards} shards "
                f"({self.reused_shards} reused from an interrupted run), {self.seconds:.1f} s, "
                f"{self.images_per_s:.1f} images/s")


def work_dir(cache_dir: str | Path, stage: str, settings: dict[str, Any]) -> Path:
    return Path(cache_dir) / ".work" / f"{stage}-{fingerprint(settings)}"


def plan(stage: str, ids: Sequence[str], inputs: Sequence[Any], shard_size: int,
         workdir: Path, settings: dict[str, Any], suffix: str) -> list[Shard]:
    shards = []
    for index, start in enumerate(range(0, len(ids), shard_size)):
        chunk = list(ids[start:start + shard_size])
        name = f"{index:06d}-{fingerprint(chunk)}{suffix}"
        shards.append(Shard(stage, index, chunk, list(inputs[start:start + shard_size]), start,
                            str(workdir / name), settings))
    return shards


def run(shards: list[Shard], compute: Callable[..., int], scheduler: str = "",
        desc: str = "") -> RunSummary:
    """Compute every shard whose output does not exist yet; return timing and counts."""
    stage = shards[0].stage if shards else desc
    pending = [s for s in shards if not Path(s.out).exists()]
    total = sum(len(s.ids) for s in shards)
    done_before = total - sum(len(s.ids) for s in pending)
    if pending:
        Path(pending[0].out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=done_before, desc=desc or stage, unit="img",
               dynamic_ncols=True, mininterval=1.0)
    try:
        if scheduler and pending:
            _run_dask(pending, compute, scheduler, bar)
        else:
            for shard in pending:
                compute(shard, progress=bar.update)
    except KeyboardInterrupt:
        # Shards are committed atomically: the one in flight left nothing behind.
        done = sum(Path(s.out).exists() for s in shards)
        bar.write(f"{stage}: interrupted; {done}/{len(shards)} shards are committed and a rerun "
                  "resumes from them")
        raise
    finally:
        bar.close()
    return RunSummary(stage, total - done_before, len(shards), len(shards) - len(pending),
                      time.perf_counter() - t0)


def _run_dask(pending: list[Shard], compute: Callable[..., int], scheduler: str, bar: Any) -> None:
    from dask.distributed import Client, as_completed

    with Client(scheduler, timeout="30s") as client:
        resources = _gpu_resources(client, pending)
        futures = client.map(compute, pending, pure=False, resources=resources)
        try:
            for fut in as_completed(futures):
                bar.update(fut.result())
        except BaseException:
            client.cancel(futures)  # queued shards stop; running ones still commit atomically
            raise


def _gpu_resources(client: Any, pending: list[Shard]) -> dict[str, float] | None:
    """Ask for one ``GPU`` resource per task when the workers advertise GPUs."""
    info = client.scheduler_info()
    has_gpu = any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())
    needs_model = pending[0].stage in ("extract", "caption", "embed")
    return {"GPU": 1} if has_gpu and needs_model else None


def cleanup(workdir: Path) -> None:
    """Remove a stage's finished work dir and stale ones of the same stage."""
    stage = workdir.name.rsplit("-", 1)[0]
    for old in workdir.parent.glob(f"{stage}-*"):
        shutil.rmtree(old, ignore_errors=True)
