"""Lookup order and fill-up across the tiers: L1 (memory), L2 (Redis), the disk files, the object store.

A hit in a lower tier fills the tiers above it. A store writes L1 at once and the others together.
With `storage.backend: disk` it is durable when Redis or this replica's disk holds the bytes; with
`s3` the disk is only a local read-through cache, so it is durable when the object store or Redis
holds them (another replica can then serve the URL). A shared tier that missed a write, because
it was unreachable, is listed in the journal and written as soon as it answers again.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cachetools import TTLCache
from loguru import logger

from server.cache.disk import DiskStore
from server.cache.journal import Journal
from server.cache.memory import MemoryCache
from server.cache.redis import RedisCache
from server.cache.s3 import ObjectStore

L1: Final = "l1"
L2: Final = "l2"
DISK: Final = "disk"
STORE: Final = "s3"
MISS: Final = "miss"
REFRESH_EVERY_S: Final = 60.0
INVALIDATE_CHANNEL: Final = "invalidate"
ALL: Final = "*"


@dataclass(frozen=True)
class Hit:
    wav: bytes
    tier: str


def entry_name(key: str) -> str:
    """The named entry a key's WAV is stored as in the store and the journal."""
    return f"{key}.wav"


class TieredCache:
    def __init__(
        self,
        memory: MemoryCache,
        redis: RedisCache,
        disk: DiskStore,
        store: ObjectStore | None = None,
        journal: Journal | None = None,
        *,
        store_refresh_s: float = 86400.0,
        on_replay: Callable[[str], None] = lambda tier: None,
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.disk = disk
        self.store = store if store is not None and store.enabled else None
        self.journal = journal
        self._on_replay = on_replay
        self._refreshed: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=REFRESH_EVERY_S)
        self._store_refreshed: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=store_refresh_s)
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
        if self.store is not None:
            wav = await self.store.get(entry_name(key))
            if wav is not None:
                self.memory.put(key, wav)
                self._spawn(self._fill_from_store(key, wav))
                return Hit(wav, STORE)
        return None

    async def _fill_from_store(self, key: str, wav: bytes) -> None:
        await asyncio.gather(self.redis.put(key, wav), self.disk.put(key, wav))

    def _shared(self) -> dict[str, bool]:
        """The shared tiers configured here, each with whether it is in use."""
        tiers = {L2: self.redis.enabled}
        if self.store is not None:
            tiers[STORE] = True
        return {tier: used for tier, used in tiers.items() if used}

    async def put(self, key: str, wav: bytes) -> bool:
        """Store everywhere; True when a tier that outlives this process holds it."""
        self.memory.put(key, wav)
        writes = [self.redis.put(key, wav), self.disk.put(key, wav)]
        if self.store is not None:
            writes.append(self.store.put(entry_name(key), wav, "audio/wav"))
        in_redis, on_disk, *in_store = await asyncio.gather(*writes)
        self._refreshed[key] = True
        stored = {L2: in_redis, STORE: bool(in_store and in_store[0])}
        missed = frozenset(tier for tier in self._shared() if not stored[tier])
        if missed and on_disk and self.journal is not None:
            await self.journal.add(entry_name(key), missed)
        if self.store is not None:
            self._store_refreshed[key] = True
            return stored[STORE] or in_redis
        return in_redis or on_disk

    async def direct_url(self, key: str) -> tuple[str, datetime.datetime | None] | None:
        """A URL in the object store (public base or presigned) for clients to fetch directly.

        None while the store is out: the entry may be only in Redis, and our own URL serves it.
        """
        if self.store is None or self.store.state != "ok":
            return None
        return await self.store.url(entry_name(key))

    async def replay(self) -> int:
        """Write journaled entries to the shared tiers that lacked them, if they answer now."""
        if self.journal is None:
            return 0
        written = 0
        for name, tiers in await self.journal.pending():
            key = name.rsplit(".", 1)[0]
            wav = await self.disk.get(key)
            if wav is None:
                logger.warning("journaled entry {} is gone from the disk; dropped", name)
                await self.journal.discard(name)
                continue
            remaining = []
            for tier in tiers:
                if tier == L2:
                    ok = await self.redis.put(key, wav)
                elif tier == STORE and self.store is not None:
                    ok = await self.store.put(name, wav, "audio/wav")
                else:
                    ok = True  # a tier no longer configured: nothing to do
                if ok:
                    written += 1
                    self._on_replay(tier)
                else:
                    remaining.append(tier)
            await self.journal.settle(name, remaining)
            if remaining:
                break  # still out: try again at the next round rather than time out on each entry
        if written:
            logger.info("journal: {} entries written to shared tiers", written)
        return written

    def keep_alive(self, key: str, wav: bytes) -> None:
        """A URL was handed out again: restart its expiry in the shared tiers.

        Redis and the disk at most once a minute; the object store at most once per
        s3.refresh_interval_s, because its refresh is a copy of the object onto itself.
        """
        local = key not in self._refreshed
        remote = self.store is not None and key not in self._store_refreshed
        if local:
            self._refreshed[key] = True
        if remote:
            self._store_refreshed[key] = True
        if local or remote:
            self._spawn(self._keep_alive(key, wav, local, remote))

    async def _keep_alive(self, key: str, wav: bytes, local: bool, remote: bool) -> None:
        if local:
            if not await self.disk.touch(key):
                await self.disk.put(key, wav)
            if self.redis.enabled and not await self.redis.touch(key):
                await self.redis.put(key, wav)
        if remote and self.store is not None and not await self.store.touch(entry_name(key)):
            await self.store.put(entry_name(key), wav, "audio/wav")

    async def delete(self, key: str) -> None:
        """Remove one entry from every tier, other workers' and replicas' L1 included."""
        self._forget(key)
        deletes = [self.redis.delete(key), self.disk.delete(key)]
        if self.store is not None:
            deletes.append(self.store.delete(entry_name(key)))
        await asyncio.gather(*deletes)
        await self.redis.publish(INVALIDATE_CHANNEL, key)

    async def purge(self) -> dict[str, int]:
        """Remove every entry from every tier."""
        self._forget(ALL)
        in_redis, on_disk = await asyncio.gather(self.redis.purge(), self.disk.purge())
        await self.redis.publish(INVALIDATE_CHANNEL, ALL)
        removed = {"redis": in_redis, "disk": on_disk}
        if self.store is not None:
            removed["s3"] = await self.store.purge()
        return removed

    def _forget(self, key: str) -> None:
        if key == ALL:
            self.memory.clear()
            self._refreshed.clear()
            self._store_refreshed.clear()
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
        if self.store is not None:
            await self.store.close()
        self.disk.close()
