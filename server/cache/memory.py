"""L1: an in-process LRU of WAV bytes bounded by their total size."""

from __future__ import annotations

from cachetools import LRUCache


class MemoryCache:
    def __init__(self, max_bytes: int) -> None:
        self._lru: LRUCache[str, bytes] | None = (
            LRUCache(maxsize=max_bytes, getsizeof=len) if max_bytes > 0 else None
        )

    def get(self, key: str) -> bytes | None:
        return None if self._lru is None else self._lru.get(key)

    def put(self, key: str, value: bytes) -> None:
        if self._lru is None or len(value) > self._lru.maxsize:
            return  # larger than the whole cache: serve it from L2 or disk instead
        self._lru[key] = value

    def delete(self, key: str) -> None:
        if self._lru is not None:
            self._lru.pop(key, None)

    def clear(self) -> None:
        if self._lru is not None:
            self._lru.clear()

    @property
    def size_bytes(self) -> int:
        return 0 if self._lru is None else int(self._lru.currsize)
