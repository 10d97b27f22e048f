"""Running shards of work in-process or on a dask cluster, resumably.

A shard commits its results as new segments of the feature store (``nsnet.cache_store``),
each atomically. A run that is killed, interrupted or fails keeps every segment committed so
far; the next run plans again from what the store holds, so it computes only what is still
missing. Segments are named by their rows, so two runs computing the same rows write the same
files and never corrupt each other.

With a dask scheduler address the shards are submitted to the cluster; models are cached per
worker process (``functools.lru_cache`` in ``nsnet.backbones``), so each worker loads a model
once, not once per task, and writes its segments directly into the store.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was kept and how to resume."""


class _CtrlC:
    """SIGINT during the shards is remembered, not raised where it lands: raised inside a
    finalizer or a weakref callback, CPython would print "Exception ignored in ..." with a
    traceback and drop it. ``check`` raises it at a safe point instead: between shards and
    after every batch (the progress callback), so a Ctrl-C stops the run within a batch."""

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.hit = True

    def __enter__(self) -> _CtrlC:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt


def run(shards: Sequence[Any], compute: Callable[..., int], scheduler: str = "",
        desc: str = "extract", total: int | None = None, resume_hint: str = "") -> float:
    """Compute every shard (``compute(shard, progress=...)`` returns the samples it did);
    return the seconds it took. Ctrl-C stops after committing nothing partial."""
    total = sum(s.samples for s in shards) if total is None else total
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=1.0,
               disable=not shards)
    done = 0
    try:
        if scheduler and shards:
            done = _run_dask(list(shards), compute, scheduler, bar)
        else:
            with _CtrlC() as ctrl_c:
                def progress(n: int) -> None:
                    bar.update(n)
                    ctrl_c.check()

                try:
                    for shard in shards:
                        ctrl_c.check()
                        compute(shard, progress=progress)
                        done += 1
                    ctrl_c.check()
                except Exception:
                    if ctrl_c.hit:  # e.g. decoding workers that the same Ctrl-C stopped
                        raise KeyboardInterrupt from None
                    raise
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(
            f"{desc}: interrupted after {done} of {len(shards)} shards; every finished shard is "
            f"committed to the store{f' and {resume_hint}' if resume_hint else ''}") from None
    finally:
        bar.close()
    return time.perf_counter() - t0


def _run_dask(pending: list[Any], compute: Callable[..., int], scheduler: str, bar: Any) -> int:
    from dask.distributed import Client, as_completed

    done = 0
    with Client(scheduler, timeout="30s") as client:
        resources = _gpu_resources(client, pending)
        futures = client.map(compute, pending, pure=False, resources=resources)
        try:
            for fut in as_completed(futures):
                bar.update(fut.result())
                done += 1
        except BaseException:
            client.cancel(futures)  # queued shards stop; running ones still commit atomically
            raise
    return done


def _gpu_resources(client: Any, pending: list[Any]) -> dict[str, float] | None:
    """Ask for one ``GPU`` resource per task when the workers advertise GPUs."""
    info = client.scheduler_info()
    has_gpu = any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())
    return {"GPU": 1} if has_gpu and pending else None
