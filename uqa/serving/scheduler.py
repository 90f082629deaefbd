"""Fair, bounded work: every request's windows take turns in the model's forward passes.

A request is tokenized first (`Predictor.prepare`, in a helper thread), so its cost is known in
windows before it waits for anything: more than `max_request_windows` is refused (422), and a queue
already holding `max_queue_windows` not yet computed is refused (503 with Retry-After). An accepted
request is a `Job`. One loop forms each forward pass from the jobs of one model version (the oldest
job's): every job gets an equal share of the pass's windows (at least one), left-over room goes to
the oldest first. So a small question rides in the very next pass, beside slices of the big requests
that were there before it, instead of waiting for all of them. A job whose client went away, or whose
deadline passed, is dropped: its windows are not computed. When a job has every window's logits, its
answers are made (`Predictor.finish`) in the helper thread and handed to the waiting request.

Each job keeps the model version it was tokenized with (a swap never mixes two models in one answer),
and the forward passes run one at a time in one thread (torch releases the GIL)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue holds too many windows: try again after `retry_after` seconds."""

    def __init__(self, waiting: int, wanted: int, bound: int, retry_after: int = 1):
        super().__init__(f"{waiting} windows are waiting and this request has {wanted} (the bound is {bound}): "
                         "try again shortly")
        self.retry_after = retry_after


class TooMuchWork(Exception):
    """One request over the per-request cap, in windows."""

    def __init__(self, windows: int, cap: int):
        super().__init__(f"this request needs {windows} windows of the model; the cap is {cap} per request "
                         "(--max-request-windows): send fewer or shorter contexts")
        self.windows, self.cap = windows, cap


@dataclass
class ScheduleSettings:
    max_request_windows: int = 8192  # per request
    max_queue_windows: int = 16384  # waiting (not yet computed) over all requests
    max_wait_ms: float = 5.0  # how long an idle loop waits for company before the first pass
    timeout_s: float = 60.0  # a request's deadline, from its arrival

    def __post_init__(self):
        if self.max_request_windows < 1 or self.max_queue_windows < self.max_request_windows or \
                self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError(f"invalid scheduling settings: {self}")


@dataclass(eq=False)  # a job is itself: compared by identity (its arrays do not compare)
class Job:
    """One request's windows, their logits as they are computed, and the future its request awaits."""

    served: Any  # uqa.serving.models.ServedModel: the version that tokenized it answers it
    prepared: Any  # uqa.model.predict.Prepared
    finish: Callable[[Any, Any], Any]  # (prepared, logits) -> the request's result
    future: asyncio.Future
    deadline: float
    arrived: float = field(default_factory=time.monotonic)
    handed: int = 0  # windows given to forward passes so far
    computed: int = 0
    cancelled: str | None = None  # why its remaining windows are dropped
    start: np.ndarray | None = None
    end: np.ndarray | None = None

    @property
    def windows(self) -> int:
        return self.prepared.n_windows

    @property
    def waiting(self) -> int:
        return self.windows - self.handed

    def cancel(self, why: str) -> None:
        self.cancelled = why


@dataclass
class ScheduleStats:
    passes: int = 0
    windows: int = 0
    requests: int = 0
    dropped: int = 0  # requests whose remaining windows were not computed (gone, late)
    largest_pass: int = 0
    windows_per_second: float = 0.0  # recent throughput (what Retry-After is estimated from)


class WindowScheduler:
    def __init__(self, settings: ScheduleSettings | None = None,
                 on_pass: Callable[[int], None] | None = None):
        self.settings = settings or ScheduleSettings()
        self.stats = ScheduleStats()
        self.on_pass = on_pass  # e.g. a metrics histogram of windows per pass
        self._jobs: deque[Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._forward = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="uqa-forward")
        # tokenizing arrivals and answering finished jobs apart: a big job's answers never hold up a small
        # question's tokenizing (two tokenizing threads: the Rust tokenizer releases the GIL)
        self.helper = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="uqa-tokenize")
        self._answering = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="uqa-answer")

    @property
    def waiting_windows(self) -> int:
        return sum(j.waiting for j in self._jobs if not j.cancelled)

    @property
    def waiting_requests(self) -> int:
        return sum(1 for j in self._jobs if not j.cancelled)

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="uqa-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(Overloaded(0, job.windows, self.settings.max_queue_windows))
        self._jobs.clear()
        for pool in (self._forward, self.helper, self._answering):
            pool.shutdown(wait=True)

    def admit(self, job: Job) -> None:
        """Queue `job`, or refuse it: TooMuchWork (over the per-request cap), Overloaded (queue full)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the scheduler is not running")
        s = self.settings
        if job.windows > s.max_request_windows:
            raise TooMuchWork(job.windows, s.max_request_windows)
        waiting = self.waiting_windows
        if waiting + job.windows > s.max_queue_windows:
            rate = self.stats.windows_per_second
            retry = max(1, math.ceil(waiting / rate)) if rate > 0 else 1
            raise Overloaded(waiting, job.windows, s.max_queue_windows, retry_after=min(retry, 60))
        job.start = np.full((job.windows, int(job.prepared.windows.lengths.max())), -np.inf, dtype=np.float32)
        job.end = np.full_like(job.start, -np.inf)
        self._jobs.append(job)
        self._wakeup.set()

    # -- the loop -------------------------------------------------------------------------------------

    def _live(self) -> list[Job]:
        now = time.monotonic()
        for job in self._jobs:
            if job.cancelled is None and job.future.done():
                job.cancel("the request ended")  # its client went away, or its deadline passed
            elif job.cancelled is None and now > job.deadline:
                job.cancel("deadline")
        dropped = [j for j in self._jobs if j.cancelled is not None]
        for job in dropped:
            self._jobs.remove(job)
            self.stats.dropped += 1
            log.info("dropped a request's remaining %d of %d windows (%s)", job.waiting, job.windows, job.cancelled)
        return [j for j in self._jobs if j.waiting > 0]

    def _take(self, live: list[Job]) -> list[tuple[Job, np.ndarray]]:
        """One pass: the oldest job's model version, an equal share of its capacity per job, the rest oldest first."""
        served = live[0].served
        jobs = [j for j in live if j.served is served]
        capacity = max(1, int(served.predictor.batch_size))
        share = max(1, capacity // len(jobs))
        counts = {id(j): 0 for j in jobs}
        room = capacity
        for job in jobs:  # everyone's share, in arrival order
            n = min(share, job.waiting, room)
            counts[id(job)] += n
            room -= n
            if room == 0:
                break
        for job in jobs:  # what is left, oldest first
            if room == 0:
                break
            n = min(job.waiting - counts[id(job)], room)
            counts[id(job)] += n
            room -= n
        taken = []
        for job in jobs:
            n = counts[id(job)]
            if n:
                taken.append((job, np.arange(job.handed, job.handed + n)))
                job.handed += n
        return taken

    async def _gather_wait(self) -> None:
        """An idle loop waits up to max_wait_ms after the first job for others to share its first pass."""
        first = self._jobs[0]
        capacity = max(1, int(first.served.predictor.batch_size))
        deadline = first.arrived + self.settings.max_wait_ms / 1000
        while self.waiting_windows < capacity:
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
        idle = True
        while True:
            live = self._live()
            if not live:
                idle = True
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if idle:
                await self._gather_wait()
                idle = False
                live = self._live()
                if not live:
                    continue
            taken = self._take(live)
            started = time.monotonic()
            try:
                await loop.run_in_executor(self._forward, self._run_pass, taken)
            except Exception as exc:  # the pass failed: each job in it gets the error, the loop goes on
                log.exception("a forward pass of %d request(s) failed", len(taken))
                for job, _ in taken:
                    if not job.future.done():
                        job.future.set_exception(exc)
                    job.cancel("its forward pass failed")
                continue
            n = sum(len(idx) for _, idx in taken)
            self._count(n, time.monotonic() - started)
            for job, idx in taken:
                job.computed += len(idx)
                if job.computed == job.windows and job.cancelled is None:
                    self._jobs.remove(job)
                    self.stats.requests += 1
                    loop.run_in_executor(self._answering, self._finish, job, loop)

    def _run_pass(self, taken: list[tuple[Job, np.ndarray]]) -> None:
        """One forward pass over the windows taken from several jobs (one model): logits into each job."""
        from uqa.model.inference import window_logits
        from uqa.text.windows import concat_windows

        served = taken[0][0].served
        predictor = served.predictor
        slices = [job.prepared.windows.take(idx) for job, idx in taken]
        # which row a window belongs to does not matter for its logits: each slice keeps its own
        windows = concat_windows([(w, np.arange(int(w.window_to_example.max()) + 1)) for w in slices])
        logits = window_logits(predictor.model, windows, predictor.tokenizer.pad_token_id, windows.n_windows,
                               "auto", predictor.device)
        row = 0
        for job, idx in taken:  # the logits are -inf past each window's length, as the job's arrays start
            width = min(job.start.shape[1], logits.start.shape[1])
            job.start[idx, :width] = logits.start[row:row + len(idx), :width]
            job.end[idx, :width] = logits.end[row:row + len(idx), :width]
            row += len(idx)

    def _finish(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        from uqa.model.inference import WindowLogits

        try:
            result = job.finish(job.prepared, WindowLogits(job.start, job.end))
        except Exception as exc:  # noqa: BLE001 - reaches that request only
            result = exc
        job.start = job.end = None  # the logits are not kept once answered
        loop.call_soon_threadsafe(_resolve, job.future, result)

    def _count(self, windows: int, seconds: float) -> None:
        s = self.stats
        s.passes += 1
        s.windows += windows
        s.largest_pass = max(s.largest_pass, windows)
        if seconds > 0:
            rate = windows / seconds
            s.windows_per_second = rate if s.windows_per_second == 0 else 0.8 * s.windows_per_second + 0.2 * rate
        if self.on_pass is not None:
            self.on_pass(windows)


def _resolve(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
