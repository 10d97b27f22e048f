"""Micro-batching: concurrent requests' items are merged into one model call.

One asyncio task collects queued items until ``max_batch`` are waiting or ``max_wait`` seconds
have passed since the first, then runs the batch in a single worker thread (the model is never
called from two threads at once) while the event loop keeps accepting and queueing requests.
The queue is bounded: a request whose items do not fit is refused at once (``Overloaded``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


class TimedOut(Exception):
    """The request's items were not scored within its time limit."""


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    refused: int = 0
    timed_out: int = 0

    def as_dict(self) -> dict[str, Any]:
        mean = self.items / self.batches if self.batches else 0.0
        return {**self.__dict__, "mean_batch": round(mean, 3)}


class MicroBatcher:
    """Queue items from many requests; ``run`` scores a list of items in one call."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_batch: int = 16,
                 max_wait: float = 0.01, max_queue: int = 256) -> None:
        self.run, self.max_batch = run, max_batch
        self.max_wait, self.max_queue = max_wait, max_queue
        self.stats = BatchStats()
        self._queue: collections.deque[tuple[Any, asyncio.Future[Any]]] = collections.deque()
        self._more: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nsnet-model")

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._more = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut in self._queue:
            fut.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: Sequence[Any], timeout: float) -> list[Any]:
        """Results of ``items`` in order; ``Overloaded`` if they do not fit the queue,
        ``TimedOut`` after ``timeout`` seconds (their queued items are then dropped)."""
        if self._more is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(self._queue) + len(items) > self.max_queue:
            self.stats.refused += 1
            raise Overloaded(f"{len(self._queue)} images are waiting (queue limit "
                             f"{self.max_queue}); retry later")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futures, strict=True))
        self._more.set()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout))
        except asyncio.TimeoutError:
            self.stats.timed_out += 1
            raise TimedOut(f"not scored within {timeout:g} s") from None
        finally:
            for fut in futures:  # a cancelled future's item is skipped by the loop
                if not fut.done():
                    fut.cancel()

    def _take(self) -> list[tuple[Any, asyncio.Future[Any]]]:
        batch = []
        while self._queue and len(batch) < self.max_batch:
            item, fut = self._queue.popleft()
            if not fut.done():
                batch.append((item, fut))
        return batch

    async def _fill(self) -> None:
        """Wait until a full batch is queued or ``max_wait`` has passed since the first item."""
        assert self._more is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(self._queue) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._more.clear()
            try:
                await asyncio.wait_for(self._more.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _loop(self) -> None:
        assert self._more is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._more.clear()
                await self._more.wait()
                continue
            await self._fill()
            batch = self._take()
            if not batch:
                continue
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            try:
                results = await loop.run_in_executor(self._pool, self.run,
                                                     [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
