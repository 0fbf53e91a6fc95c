"""The inference scheduler: bounded admission, earliest-deadline-first, off the IOLoop.

Work is scheduled chunk by chunk, not request by request. Each chunk carries a deadline: for a
request's first chunk, the moment it arrived (so first chunks go before everything already
playing); for later chunks, the moment the audio already produced would finish playing. Running
the earliest deadline first gives new streams fast first audio and keeps every playing stream
ahead of its listener, where a FIFO of whole requests would starve both.

Inference runs in a small thread pool (onnxruntime releases the GIL), so the IOLoop only
schedules. Admission is bounded: past `max_active` requests, callers get `Overloaded` (503).

Dynamic batching: jobs that share a batch key (same voice and speed) may run as one call. The
earliest-deadline job leads; queued jobs with its key join in deadline order, up to the leader's
limit and while padding stays within `max_padding` of the real work. When the batch is not full
the leader may wait up to `window_s` for more, but never past its own deadline: a first chunk's
deadline is its arrival, so first chunks never wait, and a first chunk arriving during a wait
leads at once, taking the waiting jobs along.

Background jobs (the sentences of `/jobs` documents) come after every interactive job in the
deadline order, start only while fewer than `concurrency` calls run, and never take an
interactive slot: interactive calls have `concurrency` slots of their own beside them, so a
stream's first window starts at once even while a background window is in progress.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from server.errors import Overloaded

T = TypeVar("T")
RETRY_AFTER_S: Final = 1


@dataclass(order=True)
class _Job:
    deadline: float
    seq: int
    run_many: Callable[[list[Any]], Sequence[Any]] = field(compare=False)
    item: Any = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    queued_at: float = field(compare=False)
    key: Hashable | None = field(default=None, compare=False)  # None: always runs alone
    size: int = field(default=1, compare=False)  # work units (phonemes), for the padding rule
    limit: int = field(default=1, compare=False)  # most jobs in a batch this job leads
    background: bool = field(default=False, compare=False)  # a job's sentence: only spare capacity


def _alone(fn: Callable[[], T]) -> Callable[[list[None]], list[T]]:
    return lambda _items: [fn()]


class Scheduler:
    def __init__(
        self,
        concurrency: int,
        max_active: int,
        *,
        window_s: float = 0.0,
        max_padding: float = 1.0,
    ) -> None:
        self._concurrency = concurrency
        self._max_active = max_active
        self._window_s = window_s
        self._max_padding = max_padding
        # Twice the slots: background calls may hold `concurrency` threads without taking any from
        # interactive ones (see the module docstring).
        self._executor = ThreadPoolExecutor(2 * concurrency, thread_name_prefix="infer")
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._running = 0
        self._running_background = 0
        self._timer: asyncio.TimerHandle | None = None
        self.active = 0
        self.completed = 0
        self.batches = 0

    @property
    def queued(self) -> int:
        return len(self._heap)

    @property
    def running(self) -> int:
        return self._running

    def admit(self) -> Admission:
        """Reserve a slot for one request, or refuse with 503 when the server is saturated."""
        if self.active >= self._max_active:
            raise Overloaded("the server is busy; retry shortly", retry_after_s=RETRY_AFTER_S)
        self.active += 1
        return Admission(self)

    async def run(self, fn: Callable[[], T], deadline: float) -> T:
        """Run `fn` alone in the pool when its deadline is the earliest waiting."""
        return await self._submit(_alone(fn), None, deadline, None, 1, 1)

    async def run_batched(
        self,
        run_many: Callable[[list[Any]], Sequence[T]],
        item: Any,
        deadline: float,
        *,
        key: Hashable,
        size: int,
        limit: int,
        background: bool = False,
    ) -> T:
        """Run `item` through `run_many`, perhaps in one call with other items of the same `key`.

        `run_many` is blocking and returns one result per item, in order; all jobs with one key
        must accept each other's items (the leader's `run_many` runs the whole batch).
        """
        return await self._submit(run_many, item, deadline, key, size, limit, background)

    async def _submit(
        self,
        run_many: Callable[[list[Any]], Sequence[T]],
        item: Any,
        deadline: float,
        key: Hashable | None,
        size: int,
        limit: int,
        background: bool = False,
    ) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(
            deadline, next(self._seq), run_many, item, future, loop.time(), key, size, limit, background
        )
        heapq.heappush(self._heap, job)
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._heap:
            leader = self._heap[0]
            if leader.future.done():  # its requester went away while it waited
                heapq.heappop(self._heap)
                continue
            if self._running >= self._concurrency and (
                leader.background or self._running - self._running_background >= self._concurrency
            ):
                return  # no spare capacity for background work, or every interactive slot busy
            batch = self._batch_for(leader)
            if len(batch) < leader.limit:
                hold_until = min(leader.queued_at + self._window_s, leader.deadline)
                if hold_until > loop.time():
                    self._timer = loop.call_at(hold_until, self._dispatch)
                    return
            taken = {id(job) for job in batch}
            self._heap = [job for job in self._heap if id(job) not in taken]
            heapq.heapify(self._heap)
            self._running += 1
            self._running_background += leader.background
            self.batches += 1
            done = loop.run_in_executor(self._executor, leader.run_many, [job.item for job in batch])
            done.add_done_callback(lambda result, batch=batch: self._finished(batch, result))

    def _batch_for(self, leader: _Job) -> list[_Job]:
        """The leader and the queued jobs that may share its call, earliest deadline first."""
        batch = [leader]
        if leader.key is None or leader.limit <= 1:
            return batch
        real = longest = leader.size
        for job in sorted(self._heap):
            if len(batch) >= leader.limit:
                break
            if job is leader or job.key != leader.key or job.future.done():
                continue
            wider = max(longest, job.size)
            if (len(batch) + 1) * wider > (1 + self._max_padding) * (real + job.size):
                continue  # too much padding: it waits for a batch of its own size
            batch.append(job)
            real += job.size
            longest = wider
        return batch

    def _finished(self, batch: list[_Job], result: asyncio.Future[Sequence[Any]]) -> None:
        self._running -= 1
        self._running_background -= batch[0].background
        self.completed += len(batch)
        if result.cancelled():  # the pool shut down under it
            for job in batch:
                job.future.cancel()
        elif (error := result.exception()) is not None:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
        else:
            for job, value in zip(batch, result.result(), strict=True):
                if not job.future.done():
                    job.future.set_result(value)
        # Not at once: the jobs' owners resume first (their wake-ups are already queued) and
        # queue their next jobs, so the choice sees them too. A stream's next window then competes
        # by deadline with the others', and equal windows of concurrent streams can share a call
        # instead of strictly alternating.
        asyncio.get_running_loop().call_soon(self._dispatch)

    def shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class Admission:
    """A held request slot; release it exactly once."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._scheduler.active -= 1
