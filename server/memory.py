"""Giving the heap that Python and onnxruntime freed back to the system.

glibc keeps freed memory for reuse, in one arena per thread that allocated it, so a worker's
resident size stays at the peak of whatever it once did (loading a voice, a burst of whole-
sentence calls) long after. `malloc_trim` returns the free pages of every arena. It is called
after the voices load and whenever the last synthesis in flight ends, from a thread: it walks
the arenas under their locks, which must not stall the IOLoop. Without glibc it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes


def trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
