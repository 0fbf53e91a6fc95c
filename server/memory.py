"""Giving the heap that Python and onnxruntime freed back to the system, and keeping it whole.

glibc keeps freed memory for reuse in its arenas, so a worker's resident size stays at the peak
of whatever it once did (loading a voice, a burst of whole-sentence calls) long after.
`malloc_trim` returns the free pages of every arena. It is called after the voices load, and
(`IdleTrim`) once the worker has been idle for a second (no request in flight, no synthesis
running), at most every few seconds: a burst of syntheses leaves its calls' buffers behind, a
burst of cache hits its request and response buffers. Always from a thread: it walks the arenas
under their locks, which must not stall the IOLoop. `limit_malloc_arenas` keeps those arenas
few, so that what is freed can be returned. Without glibc both do nothing.
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
IDLE_TRIM_DELAY_S: Final = 1.0
MALLOC_ARENAS: Final = 1
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
    worker that had streamed each format once stayed at 331 MiB after the trim, and at 224 to
    240 MiB with two arenas. With two, a new worker also varied from 196 to 215 MiB, by how
    loading's threads happened to share out the second arena; with one it is 187 to 188 MiB,
    and 214 after the bench's kinds of engine work (241 with two). Threads that allocate at once
    then share one lock, but inference's buffers are large and few: streams' first audio and
    files' times measured the same within noise.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, arenas)


class IdleTrim:
    """Trims the heap once the worker has been idle a moment, at most once an interval.

    Idle means no request in flight and no synthesis running (`still_idle` tells). The
    trim waits `delay_s` after going idle, and runs only if the worker is still idle then: a
    trim returns the pages of the last call's buffers, which the next call must fault back in,
    and holds the arenas' locks while it walks them, so a worker that is busy again at once
    keeps them (streams that follow each other closely no longer pay for a trim in between). A
    worker that stays idle is trimmed within `delay_s` (or the rest of the interval since the
    last trim).
    """

    def __init__(
        self,
        still_idle: Callable[[], bool],
        interval_s: float = IDLE_TRIM_INTERVAL_S,
        delay_s: float = IDLE_TRIM_DELAY_S,
    ) -> None:
        self._still_idle = still_idle
        self._interval_s = interval_s
        self._delay_s = delay_s
        self._last = -interval_s
        self._deferred: asyncio.TimerHandle | None = None

    def idle(self) -> None:
        """The worker just went idle (on the IOLoop): the last request or synthesis ended."""
        if self._deferred is not None:
            return  # a trim is already due
        now = time.monotonic()
        when = max(now + self._delay_s, self._last + self._interval_s)
        self._deferred = asyncio.get_running_loop().call_later(when - now, self._due)

    def _due(self) -> None:
        self._deferred = None
        if self._still_idle():
            self._last = time.monotonic()
            with contextlib.suppress(RuntimeError):  # the executor is shut down: we are closing
                asyncio.get_running_loop().run_in_executor(None, trim_heap)
