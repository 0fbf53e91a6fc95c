"""Spec of giving freed heap back: when the worker goes idle, at most once an interval."""

from __future__ import annotations

import asyncio

import pytest

import server.memory
from server.memory import IdleTrim


def test_going_idle_trims_the_heap_in_a_thread_at_most_once_an_interval(monkeypatch: pytest.MonkeyPatch):
    trims: list[str] = []
    monkeypatch.setattr(server.memory, "trim_heap", lambda: trims.append("trim"))

    async def scenario() -> None:
        trim = IdleTrim(interval_s=0.2)
        trim.idle(lambda: True)
        trim.idle(lambda: True)  # idle again at once: no second trim now...
        await asyncio.sleep(0.05)
        assert trims == ["trim"]
        await asyncio.sleep(0.25)  # ...but when the interval ends, since it is still idle
        assert trims == ["trim", "trim"]
        await asyncio.sleep(0.2)
        trim.idle(lambda: True)  # an interval after the last trim: trims at once
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert trims == ["trim", "trim", "trim"]


def test_a_deferred_trim_is_skipped_when_the_worker_is_busy_again(monkeypatch: pytest.MonkeyPatch):
    trims: list[str] = []
    monkeypatch.setattr(server.memory, "trim_heap", lambda: trims.append("trim"))

    async def scenario() -> None:
        trim = IdleTrim(interval_s=0.1)
        trim.idle(lambda: True)
        trim.idle(lambda: False)  # by the interval's end a request is in flight again
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert trims == ["trim"]
