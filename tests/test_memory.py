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
        trim.idle()
        trim.idle()  # idle again at once: no second trim
        await asyncio.sleep(0.3)
        trim.idle()  # an interval later: trims again
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert trims == ["trim", "trim"]
