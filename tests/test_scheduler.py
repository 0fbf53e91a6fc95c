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
def scheduler(
    concurrency: int = 1, max_active: int = 16, window_s: float = 0.0, max_padding: float = 1.0
) -> Iterator[Scheduler]:
    sched = Scheduler(
        concurrency=concurrency, max_active=max_active, window_s=window_s, max_padding=max_padding
    )
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


# Dynamic batching: jobs with one key may share a call; the earliest deadline leads.


class Calls:
    """A `run_many` that records each call's items."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(items)
        return [f"done {item}" for item in items]


def batched(
    sched: Scheduler,
    calls: Calls,
    item: str,
    deadline: float,
    key: str = "joe@1.0",
    size: int = 10,
    limit: int = 8,
) -> asyncio.Future[str]:
    return asyncio.ensure_future(sched.run_batched(calls, item, deadline, key=key, size=size, limit=limit))


async def queued_behind_a_busy_slot(sched: Scheduler, calls: Calls, jobs: list[dict]) -> list[str]:
    """Occupy the only slot, queue `jobs`, free the slot; the results in submission order."""
    gate = threading.Event()
    blocker = await occupy(sched, gate)
    waiting = [batched(sched, calls, **job) for job in jobs]
    while sched.queued < len(jobs):
        await asyncio.sleep(0)
    gate.set()
    await blocker
    return list(await asyncio.gather(*waiting))


def test_jobs_with_one_key_waiting_together_run_as_one_call_in_deadline_order():
    async def scenario() -> tuple[list[str], list[list[str]], int]:
        calls = Calls()
        with scheduler() as sched:
            jobs = [dict(item=name, deadline=d) for name, d in [("c", 3.0), ("a", 1.0), ("b", 2.0)]]
            results = await queued_behind_a_busy_slot(sched, calls, jobs)
            return results, calls.batches, sched.completed

    results, batches, completed = run(scenario)
    assert results == ["done c", "done a", "done b"]  # each caller gets its own result
    assert batches == [["a", "b", "c"]]
    assert completed == 4  # the blocker and three batched jobs


def test_jobs_with_different_keys_never_share_a_call():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        with scheduler() as sched:
            jobs = [
                dict(item="joe-1", deadline=1.0, key="joe@1.0"),
                dict(item="joe-slow", deadline=2.0, key="joe@1.5"),
                dict(item="joe-2", deadline=3.0, key="joe@1.0"),
            ]
            await queued_behind_a_busy_slot(sched, calls, jobs)
            return calls.batches

    assert run(scenario) == [["joe-1", "joe-2"], ["joe-slow"]]


def test_the_leaders_limit_caps_the_batch():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        with scheduler() as sched:
            jobs = [dict(item=str(n), deadline=float(n), limit=2) for n in range(5)]
            await queued_behind_a_busy_slot(sched, calls, jobs)
            return calls.batches

    assert run(scenario) == [["0", "1"], ["2", "3"], ["4"]]


def test_a_job_that_would_pad_the_batch_too_much_waits_for_its_own():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        with scheduler(max_padding=0.5) as sched:
            jobs = [
                dict(item="short-1", deadline=1.0, size=20),
                dict(item="long", deadline=2.0, size=200),  # 3 x 200 padded vs 240 real: too much
                dict(item="short-2", deadline=3.0, size=24),
            ]
            await queued_behind_a_busy_slot(sched, calls, jobs)
            return calls.batches

    assert run(scenario) == [["short-1", "short-2"], ["long"]]


def test_a_batch_failure_reaches_every_caller_in_it():
    def boom(items: list[str]) -> list[str]:
        raise RuntimeError("model exploded")

    async def scenario() -> list[BaseException | str]:
        with scheduler() as sched:
            gate = threading.Event()
            blocker = await occupy(sched, gate)
            waiting = [
                asyncio.ensure_future(sched.run_batched(boom, n, 1.0, key="k", size=1, limit=8)) for n in "ab"
            ]
            while sched.queued < 2:
                await asyncio.sleep(0)
            gate.set()
            await blocker
            return list(await asyncio.gather(*waiting, return_exceptions=True))

    results = run(scenario)
    assert [str(r) for r in results] == ["model exploded", "model exploded"]


def test_a_cancelled_job_is_left_out_of_the_batch():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        with scheduler() as sched:
            gate = threading.Event()
            blocker = await occupy(sched, gate)
            kept = batched(sched, calls, "kept", 1.0)
            gone = batched(sched, calls, "gone", 2.0)
            while sched.queued < 2:
                await asyncio.sleep(0)
            gone.cancel()
            gate.set()
            await asyncio.gather(blocker, kept)
            return calls.batches

    assert run(scenario) == [["kept"]]


def test_a_job_with_time_to_spare_waits_the_window_for_company():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        with scheduler(window_s=0.5) as sched:
            far = asyncio.get_running_loop().time() + 60  # a later chunk, well ahead of its listener
            first = batched(sched, calls, "early", far)
            await asyncio.sleep(0.05)  # well inside the window: nothing has run yet
            assert calls.batches == []
            second = batched(sched, calls, "late", far + 1)
            await asyncio.gather(first, second)
            return calls.batches

    assert run(scenario) == [["early", "late"]]


def test_a_job_never_waits_past_its_deadline():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        with scheduler(window_s=WAIT_S * 2) as sched:
            now = asyncio.get_running_loop().time()
            # A first chunk's deadline is its arrival: with a window longer than the test's own
            # time limit, only running at once lets this finish.
            await batched(sched, calls, "first chunk", now)
            await batched(sched, calls, "due soon", now + 0.05)
            return calls.batches

    assert run(scenario) == [["first chunk"], ["due soon"]]


def test_a_first_chunk_arriving_during_a_wait_leads_and_takes_the_waiting_job_along():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        with scheduler(window_s=WAIT_S * 2) as sched:
            loop = asyncio.get_running_loop()
            waiting = batched(sched, calls, "later chunk", loop.time() + WAIT_S * 2)
            await asyncio.sleep(0.05)
            assert calls.batches == []
            first = batched(sched, calls, "first chunk", loop.time())
            await asyncio.gather(first, waiting)
            return calls.batches

    assert run(scenario) == [["first chunk", "later chunk"]]


def test_plain_jobs_never_join_a_batch():
    async def scenario() -> list[list[str]]:
        calls = Calls()
        order: list[str] = []
        with scheduler() as sched:
            gate = threading.Event()
            blocker = await occupy(sched, gate)
            plain = asyncio.ensure_future(sched.run(recorder(order, "plain"), 1.0))
            grouped = [batched(sched, calls, n, 2.0) for n in "ab"]
            while sched.queued < 3:
                await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(blocker, plain, *grouped)
            assert order == ["plain"]
            return calls.batches

    assert run(scenario) == [["a", "b"]]


def background(sched: Scheduler, fn: Callable[[], T], deadline: float = 1e6) -> asyncio.Task[T]:
    """A job's sentence: run through run_batched with background=True."""
    return asyncio.ensure_future(
        sched.run_batched(
            lambda items: [fn() for _ in items], None, deadline, key=None, size=1, limit=1, background=True
        )
    )


def test_an_interactive_job_starts_while_a_background_job_holds_the_slot():
    async def scenario() -> list[str]:
        order: list[str] = []
        gate = threading.Event()
        with scheduler(concurrency=1) as sched:
            held = background(sched, lambda: gate.wait(WAIT_S))
            while sched.running == 0:
                await asyncio.sleep(0)
            # The background job still runs (gate closed): the interactive one does not wait for it.
            result = await sched.run(recorder(order, "interactive"), deadline=0.0)
            order.append("background still running" if not held.done() else "background done")
            gate.set()
            await held
        return [result, *order]

    assert run(scenario) == ["interactive", "interactive", "background still running"]


def test_a_background_job_waits_while_the_slot_is_busy():
    async def scenario() -> list[str]:
        order: list[str] = []
        gate = threading.Event()
        with scheduler(concurrency=1) as sched:
            busy = await occupy(sched, gate)  # an interactive job holds the only slot
            later = background(sched, recorder(order, "background"))
            await asyncio.sleep(0.05)
            order.append("slot freed")
            gate.set()
            await busy
            await later
        return order

    assert run(scenario) == ["slot freed", "background"]
