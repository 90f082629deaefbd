"""Dynamic batching: requests that arrive together are answered by one call of the model.

A request is a payload of `size` items (its questions). `submit` puts it in a bounded queue and waits; one
loop takes the waiting requests in arrival order, up to `max_batch_size` items (a request is never
split), waiting at most `max_wait_ms` after the first of them for the batch to fill, and hands the
batch to `run` in a worker thread (torch releases the GIL). While that forward pass runs, the next
batch gathers. More than `max_queue` waiting items: `Overloaded` (the server answers 503 with
Retry-After) instead of unbounded memory.

`run(batch)` gets the requests' payloads and returns, per request, a result or an exception to
raise in that request only (so one bad request never fails the others)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full: try again after `retry_after` seconds."""

    def __init__(self, waiting: int, bound: int, retry_after: int = 1):
        super().__init__(f"{waiting} questions are waiting (the bound is {bound}): try again shortly")
        self.retry_after = retry_after


@dataclass
class BatchSettings:
    max_batch_size: int = 32  # items (questions) per model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # items waiting (not yet in a running batch) before 503

    def __post_init__(self):
        if self.max_batch_size < 1 or self.max_wait_ms < 0 or self.max_queue < 1:
            raise ValueError(f"invalid batch settings: {self}")


@dataclass
class _Pending:
    payload: Any
    size: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    items: int = 0
    largest_batch: int = 0


class DynamicBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], settings: BatchSettings | None = None):
        self.run = run
        self.settings = settings or BatchSettings()
        self.stats = BatchStats()
        self._queue: deque[_Pending] = deque()
        self._waiting_items = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="uqa-forward")

    @property
    def waiting(self) -> int:
        return self._waiting_items

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="uqa-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(Overloaded(0, self.settings.max_queue))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, payload: Any, size: int = 1) -> Any:
        """The result for this request (or its exception), once its batch has run; `size`: its items."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        if self._waiting_items + size > self.settings.max_queue:
            raise Overloaded(self._waiting_items, self.settings.max_queue)
        pending = _Pending(payload, size, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._waiting_items += size
        self._wakeup.set()
        return await pending.future

    def _take_batch(self) -> list[_Pending]:
        batch, size = [], 0
        while self._queue:
            nxt = self._queue[0]
            if batch and size + nxt.size > self.settings.max_batch_size:
                break
            self._queue.popleft()
            self._waiting_items -= nxt.size
            if nxt.future.done():  # the client went away while waiting
                continue
            batch.append(nxt)
            size += nxt.size
        return batch

    async def _gather_wait(self) -> None:
        """Wait until the batch is full or the first request has waited max_wait_ms."""
        deadline = self._queue[0].arrived + self.settings.max_wait_ms / 1000
        while self._waiting_items < self.settings.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_wait()
            batch = self._take_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run, [p.payload for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} requests")
            except Exception as exc:  # the whole batch failed: every request in it gets the error
                log.exception("batch of %d request(s) failed", len(batch))
                results = [exc] * len(batch)
            self.stats.batches += 1
            self.stats.requests += len(batch)
            n_items = sum(p.size for p in batch)
            self.stats.items += n_items
            self.stats.largest_batch = max(self.stats.largest_batch, n_items)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
