"""Lookup order and fill-up across the tiers: L1 (memory), L2 (Redis), then the disk files.

A hit in a lower tier fills the tiers above it. A store writes L1 at once and L2 and disk
together; it is durable when either of the shared tiers holds the bytes, because only then
does a URL we hand out survive this process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from cachetools import TTLCache

from server.cache.disk import DiskStore
from server.cache.memory import MemoryCache
from server.cache.redis import RedisCache

L1: Final = "l1"
L2: Final = "l2"
DISK: Final = "disk"
MISS: Final = "miss"
REFRESH_EVERY_S: Final = 60.0
INVALIDATE_CHANNEL: Final = "invalidate"
ALL: Final = "*"


@dataclass(frozen=True)
class Hit:
    wav: bytes
    tier: str


class TieredCache:
    def __init__(self, memory: MemoryCache, redis: RedisCache, disk: DiskStore) -> None:
        self.memory = memory
        self.redis = redis
        self.disk = disk
        self._refreshed: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=REFRESH_EVERY_S)
        self._background: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> Hit | None:
        wav = self.memory.get(key)
        if wav is not None:
            return Hit(wav, L1)
        wav = await self.redis.get(key)
        if wav is not None:
            self.memory.put(key, wav)
            return Hit(wav, L2)
        wav = await self.disk.get(key)
        if wav is not None:
            self.memory.put(key, wav)
            self._spawn(self.redis.put(key, wav))
            return Hit(wav, DISK)
        return None

    async def put(self, key: str, wav: bytes) -> bool:
        """Store everywhere; True when a tier that outlives this process holds it."""
        self.memory.put(key, wav)
        in_redis, on_disk = await asyncio.gather(self.redis.put(key, wav), self.disk.put(key, wav))
        self._refreshed[key] = True
        return in_redis or on_disk

    def keep_alive(self, key: str, wav: bytes) -> None:
        """A URL was handed out again: restart its expiry in the shared tiers (at most once a minute)."""
        if key in self._refreshed:
            return
        self._refreshed[key] = True
        self._spawn(self._keep_alive(key, wav))

    async def _keep_alive(self, key: str, wav: bytes) -> None:
        if not await self.disk.touch(key):
            await self.disk.put(key, wav)
        if self.redis.enabled and not await self.redis.touch(key):
            await self.redis.put(key, wav)

    async def delete(self, key: str) -> None:
        """Remove one entry from every tier, other workers' and replicas' L1 included."""
        self._forget(key)
        await asyncio.gather(self.redis.delete(key), self.disk.delete(key))
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
            self.memory.delete(key)
            self._refreshed.pop(key, None)

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
