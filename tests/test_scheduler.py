"""Spec of the inference scheduler: bounded admission, earliest deadline first, work off the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from server.errors import Overloaded
from server.synthesis.scheduler import Scheduler

T = TypeVar("T")
WAIT_S = 30  # generous: only a broken scheduler ever waits this long


@contextmanager
def scheduler(concurrency: int = 1, max_active: int = 16) -> Iterator[Scheduler]:
    sched = Scheduler(concurrency=concurrency, max_active=max_active)
    try:
        yield sched
    finally:
        sched.shutdown()


async def occupy(sched: Scheduler, gate: threading.Event) -> asyncio.Task[bool]:
    """Hold the only inference slot until `gate` is set."""
    task = asyncio.ensure_future(sched.run(lambda: gate.wait(WAIT_S), deadline=0.0))
    while sched.running == 0:
        await asyncio.sleep(0)
    return task


def recorder(order: list[str], name: str) -> Callable[[], str]:
    def job() -> str:
        order.append(name)
        return name

    return job


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


def test_job_result_comes_back_to_the_caller():
    async def scenario() -> int:
        with scheduler() as sched:
            return await sched.run(lambda: 6 * 7, deadline=0.0)

    assert run(scenario) == 42


def test_job_runs_off_the_event_loop_thread():
    async def scenario() -> tuple[int, int]:
        with scheduler() as sched:
            return threading.get_ident(), await sched.run(threading.get_ident, deadline=0.0)

    loop_thread, job_thread = run(scenario)
    assert job_thread != loop_thread


def test_earliest_deadline_runs_first_when_jobs_wait_behind_a_busy_slot():
    async def scenario() -> list[str]:
        order: list[str] = []
        gate = threading.Event()
        with scheduler(concurrency=1) as sched:
            blocker = await occupy(sched, gate)
            waiting = [
                asyncio.ensure_future(sched.run(recorder(order, name), deadline))
                for name, deadline in [("late", 30.0), ("first", 10.0), ("middle", 20.0), ("second", 15.0)]
            ]
            while sched.queued < len(waiting):
                await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(blocker, *waiting)
        return order

    assert run(scenario) == ["first", "second", "middle", "late"]


def test_equal_deadlines_run_in_arrival_order():
    async def scenario() -> list[str]:
        order: list[str] = []
        gate = threading.Event()
        with scheduler(concurrency=1) as sched:
            blocker = await occupy(sched, gate)
            waiting = [asyncio.ensure_future(sched.run(recorder(order, n), 5.0)) for n in "abcd"]
            while sched.queued < len(waiting):
                await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(blocker, *waiting)
        return order

    assert run(scenario) == ["a", "b", "c", "d"]


def test_cancelled_waiter_job_is_skipped():
    async def scenario() -> tuple[list[str], int]:
        order: list[str] = []
        gate = threading.Event()
        with scheduler(concurrency=1) as sched:
            blocker = await occupy(sched, gate)
            gone = asyncio.ensure_future(sched.run(recorder(order, "gone"), deadline=1.0))
            kept = asyncio.ensure_future(sched.run(recorder(order, "kept"), deadline=2.0))
            while sched.queued < 2:
                await asyncio.sleep(0)
            gone.cancel()
            gate.set()
            await asyncio.gather(blocker, kept)
            with pytest.raises(asyncio.CancelledError):
                await gone
            return order, sched.completed

    order, completed = run(scenario)
    assert order == ["kept"]
    assert completed == 2  # the blocker and "kept"; the cancelled job never ran


def test_concurrency_bounds_jobs_running_at_once():
    async def scenario() -> int:
        gate = threading.Event()
        lock = threading.Lock()
        running = peak = 0

        def job() -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            gate.wait(WAIT_S)
            with lock:
                running -= 1

        with scheduler(concurrency=2) as sched:
            tasks = [asyncio.ensure_future(sched.run(job, float(i))) for i in range(5)]
            while sched.running < 2 or sched.queued < 3:
                await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(*tasks)
            assert (sched.running, sched.queued, sched.completed) == (0, 0, 5)
        return peak

    assert run(scenario) == 2


def test_job_exception_propagates_to_the_awaiting_caller():
    def boom() -> None:
        raise ValueError("model exploded")

    async def scenario() -> None:
        with scheduler() as sched:
            with pytest.raises(ValueError, match="model exploded"):
                await sched.run(boom, deadline=0.0)
            # The slot is free again afterwards.
            assert await sched.run(lambda: "next", deadline=0.0) == "next"
            assert sched.running == 0

    run(scenario)


def test_admit_refuses_beyond_max_active_with_503_and_retry_after():
    with scheduler(max_active=2) as sched:
        first, second = sched.admit(), sched.admit()
        with pytest.raises(Overloaded) as caught:
            sched.admit()
        assert caught.value.status == 503
        assert caught.value.retry_after_s == 1
        assert caught.value.headers == {"Retry-After": "1"}
        assert sched.active == 2
        first.release()
        second.release()


def test_release_frees_the_slot_exactly_once():
    with scheduler(max_active=2) as sched:
        first, second = sched.admit(), sched.admit()
        first.release()
        assert sched.active == 1
        first.release()
        assert sched.active == 1
        third = sched.admit()
        assert sched.active == 2
        with pytest.raises(Overloaded):
            sched.admit()
        second.release()
        third.release()
        assert sched.active == 0
