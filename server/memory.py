"""Giving the heap that Python and onnxruntime freed back to the system, and keeping it whole.

glibc keeps freed memory for reuse, in one arena per thread that allocated it, so a worker's
resident size stays at the peak of whatever it once did (loading a voice, a burst of whole-
sentence calls) long after. `malloc_trim` returns the free pages of every arena. It is called
after the voices load, whenever the last synthesis in flight ends, and (`IdleTrim`) whenever the
last request in flight ends, at most every few seconds (and within that long of going idle): a
burst of cache hits leaves its request and response buffers behind too. Always from a thread: it
walks the arenas under their locks, which must not stall the IOLoop. Without glibc it does
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import time
from collections.abc import Callable
from typing import Final

IDLE_TRIM_INTERVAL_S: Final = 5.0
MALLOC_ARENAS: Final = 2
_M_ARENA_MAX: Final = -8  # mallopt's parameter number (malloc.h)


def trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """At most `arenas` glibc heaps for all of the process's threads (unless MALLOC_ARENA_MAX is
    set, which glibc reads itself). Call it before any thread starts.

    glibc gives threads that allocate at once arenas of their own, up to 8 per core: the IOLoop,
    the text thread, the inference and encoder pools each end up with one. Their free space is
    fragmented between live blocks, and `malloc_trim` can give back only whole free pages: a
    worker that had streamed each format once stayed at 331 MiB after the trim, against 212 MiB
    with two arenas (and 253 against 193 after its first stream alone).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


class IdleTrim:
    """Trims the heap when the worker goes idle (no request in flight), at most once an interval.

    Going idle again within the interval defers the trim to the interval's end, when it runs if
    the worker is still idle then: so a worker that stays idle is always trimmed within one
    interval, not left at the peak of a burst that ended just after the previous trim.
    """

    def __init__(self, interval_s: float = IDLE_TRIM_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last = -interval_s
        self._deferred: asyncio.TimerHandle | None = None

    def idle(self, still_idle: Callable[[], bool]) -> None:
        """The last request in flight ended (on the IOLoop); `still_idle` tells whether none has
        started since (for a deferred trim)."""
        wait = self._last + self._interval_s - time.monotonic()
        if wait <= 0:
            self._trim()
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._later, still_idle)

    def _later(self, still_idle: Callable[[], bool]) -> None:
        self._deferred = None
        if still_idle():
            self._trim()

    def _trim(self) -> None:
        self._last = time.monotonic()
        asyncio.get_running_loop().run_in_executor(None, trim_heap)
