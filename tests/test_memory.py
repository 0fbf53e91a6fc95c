"""Spec of giving freed heap back: once the worker has been idle a moment, at most once an interval."""

from __future__ import annotations

import asyncio

import pytest

import server.memory
from server.memory import IdleTrim


def test_an_idle_worker_trims_its_heap_in_a_thread_a_moment_later_at_most_once_an_interval(
    monkeypatch: pytest.MonkeyPatch,
):
    trims: list[str] = []
    monkeypatch.setattr(server.memory, "trim_heap", lambda: trims.append("trim"))

    async def scenario() -> None:
        trim = IdleTrim(lambda: True, interval_s=0.3, delay_s=0.1)
        trim.idle()
        trim.idle()  # idle again at once: still one trim due
        await asyncio.sleep(0.05)
        assert trims == []  # not at once: the next call would fault the pages back in
        await asyncio.sleep(0.1)
        assert trims == ["trim"]
        trim.idle()  # idle again soon after: not before the interval ends
        await asyncio.sleep(0.1)
        assert trims == ["trim"]
        await asyncio.sleep(0.2)
        assert trims == ["trim", "trim"]

    asyncio.run(scenario())


def test_no_trim_when_the_worker_is_busy_again_by_then(monkeypatch: pytest.MonkeyPatch):
    trims: list[str] = []
    monkeypatch.setattr(server.memory, "trim_heap", lambda: trims.append("trim"))

    async def scenario() -> None:
        trim = IdleTrim(lambda: False, interval_s=0.1, delay_s=0.05)  # busy again by then
        trim.idle()
        await asyncio.sleep(0.15)

    asyncio.run(scenario())
    assert trims == []
