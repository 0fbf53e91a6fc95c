"""Giving the heap that Python and onnxruntime freed back to the system.

glibc keeps freed memory for reuse, in one arena per thread that allocated it, so a worker's
resident size stays at the peak of whatever it once did (loading a voice, a burst of whole-
sentence calls) long after. `malloc_trim` returns the free pages of every arena. It is called
after the voices load, whenever the last synthesis in flight ends, and (`IdleTrim`) whenever the
last request in flight ends, at most every few seconds: a burst of cache hits leaves its request
and response buffers behind too. Always from a thread: it walks the arenas under their locks,
which must not stall the IOLoop. Without glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import time
from typing import Final

IDLE_TRIM_INTERVAL_S: Final = 5.0


def trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class IdleTrim:
    """Trims the heap when the worker goes idle (no request in flight), at most once an interval."""

    def __init__(self, interval_s: float = IDLE_TRIM_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last = 0.0

    def idle(self) -> None:
        """The last request in flight ended (on the IOLoop)."""
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            asyncio.get_running_loop().run_in_executor(None, trim_heap)
