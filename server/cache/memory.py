"""L1: an in-process LRU of WAV bytes bounded by their total size.

Each entry also remembers the CRC-32 of its bytes once asked (`/audio` ETags are made from it), so
a file served again and again from L1 is not read through on every request to name it, and a
generation: a number no other entry of this cache has had, so that an answer made from an entry
can tell later whether L1 still holds those very bytes (see server/handlers/answers.py).
"""

from __future__ import annotations

import itertools
import zlib

from cachetools import LRUCache


class _Entry:
    __slots__ = ("crc32", "data", "generation")

    def __init__(self, data: bytes, generation: int) -> None:
        self.data = data
        self.crc32: int | None = None
        self.generation = generation


class MemoryCache:
    def __init__(self, max_bytes: int) -> None:
        self._lru: LRUCache[str, _Entry] | None = (
            LRUCache(maxsize=max_bytes, getsizeof=lambda entry: len(entry.data)) if max_bytes > 0 else None
        )
        self._generations = itertools.count(1)

    def get(self, key: str) -> bytes | None:
        entry = None if self._lru is None else self._lru.get(key)
        return None if entry is None else entry.data

    def put(self, key: str, value: bytes) -> None:
        if self._lru is None or len(value) > self._lru.maxsize:
            return  # larger than the whole cache: serve it from L2 or disk instead
        self._lru[key] = _Entry(value, next(self._generations))

    def generation(self, key: str) -> int | None:
        """The generation of the entry under `key` (None: not held); counts as a use of it."""
        entry = None if self._lru is None else self._lru.get(key)
        return None if entry is None else entry.generation

    def current(self, key: str, generation: int) -> bytes | None:
        """The bytes under `key` while they are those of `generation`; counts as a use of them."""
        entry = None if self._lru is None else self._lru.get(key)
        return entry.data if entry is not None and entry.generation == generation else None

    def checksum(self, key: str, data: bytes) -> int:
        """`zlib.crc32(data)`, computed once per entry when `data` is the very bytes L1 holds."""
        entry = None if self._lru is None else self._lru.get(key)
        if entry is None or entry.data is not data:
            return zlib.crc32(data)
        if entry.crc32 is None:
            entry.crc32 = zlib.crc32(data)
        return entry.crc32

    def delete(self, key: str) -> None:
        if self._lru is not None:
            self._lru.pop(key, None)

    def clear(self) -> None:
        if self._lru is not None:
            self._lru.clear()

    @property
    def size_bytes(self) -> int:
        return 0 if self._lru is None else int(self._lru.currsize)
