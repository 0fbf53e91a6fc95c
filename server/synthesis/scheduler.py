"""The inference scheduler: bounded admission, earliest-deadline-first, off the IOLoop.

Work is scheduled chunk by chunk, not request by request. Each chunk carries a deadline: for a
request's first chunk, the moment it arrived (so first chunks go before everything already
playing); for later chunks, the moment the audio already produced would finish playing. Running
the earliest deadline first gives new streams fast first audio and keeps every playing stream
ahead of its listener, where a FIFO of whole requests would starve both.

Inference runs in a small thread pool (onnxruntime releases the GIL), so the IOLoop only
schedules. Admission is bounded: past `max_active` requests, callers get `Overloaded` (503).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
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
    fn: Callable[[], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)


class Scheduler:
    def __init__(self, concurrency: int, max_active: int) -> None:
        self._concurrency = concurrency
        self._max_active = max_active
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="infer")
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._running = 0
        self.active = 0
        self.completed = 0

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
        """Run `fn` in the pool when its deadline is the earliest waiting."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Job(deadline, next(self._seq), fn, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self._concurrency and self._heap:
            job = heapq.heappop(self._heap)
            if job.future.done():  # its requester went away while it waited
                continue
            self._running += 1
            done = loop.run_in_executor(self._executor, job.fn)
            done.add_done_callback(lambda result, job=job: self._finished(job, result))

    def _finished(self, job: _Job, result: asyncio.Future[Any]) -> None:
        self._running -= 1
        self.completed += 1
        if not job.future.done():
            if result.exception() is not None:
                job.future.set_exception(result.exception())  # type: ignore[arg-type]
            else:
                job.future.set_result(result.result())
        self._dispatch()

    def shutdown(self) -> None:
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
