"""Lookup order and fill-up across the tiers: L1 (memory), L2 (Redis), then the disk files.

A hit in a lower tier fills the tiers above it. A store writes L1 at once and L2 and disk
together; it is durable when either of the shared tiers holds the bytes, because only then
does a URL we hand out survive this process.

One audio key names several entries: `{key}.wav` (the synthesized audio) and one entry per
encoded rendition beside it (`{key}.mp3`, `{key}.opus`, ...). The tiers store bytes under those
names without looking inside; deleting a key removes every rendition the server knows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from cachetools import TTLCache

from server.cache.disk import DiskStore
from server.cache.keys import entry_name
from server.cache.memory import MemoryCache
from server.cache.redis import RedisCache

L1: Final = "l1"
L2: Final = "l2"
DISK: Final = "disk"
MISS: Final = "miss"
REFRESH_EVERY_S: Final = 60.0
INVALIDATE_CHANNEL: Final = "invalidate"
ALL: Final = "*"
WAV_SUFFIX: Final = "wav"


@dataclass(frozen=True)
class Hit:
    data: bytes
    tier: str

    @property
    def wav(self) -> bytes:
        """The bytes of a `{key}.wav` lookup (the name most callers read)."""
        return self.data


class TieredCache:
    def __init__(
        self,
        memory: MemoryCache,
        redis: RedisCache,
        disk: DiskStore,
        *,
        suffixes: tuple[str, ...] = (WAV_SUFFIX,),
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.disk = disk
        self._suffixes = suffixes  # every rendition a key may have, for deletes
        self._refreshed: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=REFRESH_EVERY_S)
        self._background: set[asyncio.Task[None]] = set()

    async def get(self, key: str, suffix: str = WAV_SUFFIX) -> Hit | None:
        name = entry_name(key, suffix)
        data = self.memory.get(name)
        if data is not None:
            return Hit(data, L1)
        data = await self.redis.get(name)
        if data is not None:
            self.memory.put(name, data)
            return Hit(data, L2)
        data = await self.disk.get(name)
        if data is not None:
            self.memory.put(name, data)
            self._spawn(self.redis.put(name, data))
            return Hit(data, DISK)
        return None

    async def put(self, key: str, data: bytes, suffix: str = WAV_SUFFIX) -> bool:
        """Store everywhere; True when a tier that outlives this process holds it."""
        name = entry_name(key, suffix)
        self.memory.put(name, data)
        in_redis, on_disk = await asyncio.gather(self.redis.put(name, data), self.disk.put(name, data))
        self._refreshed[name] = True
        return in_redis or on_disk

    def keep_alive(self, key: str, data: bytes, suffix: str = WAV_SUFFIX) -> None:
        """A URL was handed out again: restart its expiry in the shared tiers (at most once a minute)."""
        name = entry_name(key, suffix)
        if name in self._refreshed:
            return
        self._refreshed[name] = True
        self._spawn(self._keep_alive(name, data))

    async def _keep_alive(self, name: str, data: bytes) -> None:
        if not await self.disk.touch(name):
            await self.disk.put(name, data)
        if self.redis.enabled and not await self.redis.touch(name):
            await self.redis.put(name, data)

    async def delete(self, key: str) -> None:
        """Remove a key's entries from every tier, other workers' and replicas' L1 included."""
        self._forget(key)
        names = [entry_name(key, suffix) for suffix in self._suffixes]
        await asyncio.gather(self.redis.delete(*names), self.disk.delete(key))
        await self.redis.publish(INVALIDATE_CHANNEL, key)

    async def purge(self) -> dict[str, int]:
        """Remove every entry from every tier."""
        self._forget(ALL)
        in_redis, on_disk = await asyncio.gather(self.redis.purge(), self.disk.purge())
        await self.redis.publish(INVALIDATE_CHANNEL, ALL)
        return {"redis": in_redis, "disk": on_disk}

    def _forget(self, key: str) -> None:
        if key == ALL:
            self.memory.clear()
            self._refreshed.clear()
        else:
            for suffix in self._suffixes:
                name = entry_name(key, suffix)
                self.memory.delete(name)
                self._refreshed.pop(name, None)

    async def follow_invalidations(self) -> None:
        """Drop L1 entries that another worker or replica deleted (runs for the worker's life)."""
        if not self.redis.enabled:
            return
        async for key in self.redis.subscribe(INVALIDATE_CHANNEL):
            self._forget(key)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.redis.close()
        self.disk.close()
