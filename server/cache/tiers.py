"""Lookup order and fill-up across the tiers: L1 (memory), L2 (Redis), the disk files, the object store.

A hit in a lower tier fills the tiers above it. A store writes L1 at once and the others together.
With `storage.backend: disk` it is durable when Redis or this replica's disk holds the bytes; with
`s3` the disk is only a local read-through cache, so it is durable when the object store or Redis
holds them (another replica can then serve the URL). A shared tier that missed a write, because
it was unreachable, is listed in the journal and written as soon as it answers again.

One audio key names several entries: `{key}.wav` (the synthesized audio) and one entry per
encoded rendition beside it (`{key}.mp3`, `{key}.opus`, ...). The tiers store bytes under those
names without looking inside; deleting a key removes every rendition the server knows.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from cachetools import TTLCache
from loguru import logger

from server.cache.disk import DiskStore
from server.cache.journal import Journal
from server.cache.keys import entry_name
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
WAV_SUFFIX: Final = "wav"
# The word timings of the audio, stored beside it (JSON; one short suffix, as the journal
# and the disk name entries).
WORDS_SUFFIX: Final = "words"
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


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
        store: ObjectStore | None = None,
        journal: Journal | None = None,
        *,
        store_refresh_s: float = 86400.0,
        content_types: Mapping[str, str] | None = None,
        on_replay: Callable[[str], None] = lambda tier: None,
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.disk = disk
        self.store = store if store is not None and store.enabled else None
        self.journal = journal
        self._on_replay = on_replay
        # Every suffix a key's entries may carry (for deletes), with the object store's content type.
        self._content_types = dict(content_types or {WAV_SUFFIX: "audio/wav"})
        self._refreshed: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=REFRESH_EVERY_S)
        self._store_refreshed: TTLCache[str, bool] = TTLCache(maxsize=65536, ttl=store_refresh_s)
        self._background: set[asyncio.Task[None]] = set()

    def _content_type(self, name: str) -> str:
        suffix = name.split(".", 1)[1] if "." in name else ""
        return self._content_types.get(suffix, DEFAULT_CONTENT_TYPE)

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
        if self.store is not None:
            data = await self.store.get(name)
            if data is not None:
                self.memory.put(name, data)
                self._spawn(self._fill_from_store(name, data))
                return Hit(data, STORE)
        return None

    def checksum(self, key: str, data: bytes, suffix: str = WAV_SUFFIX) -> int:
        """`zlib.crc32(data)` of an entry's bytes, remembered by L1 while it holds these very bytes."""
        return self.memory.checksum(entry_name(key, suffix), data)

    async def _fill_from_store(self, name: str, data: bytes) -> None:
        await asyncio.gather(self.redis.put(name, data), self.disk.put(name, data))

    def _shared(self) -> dict[str, bool]:
        """The shared tiers configured here, each with whether it is in use."""
        tiers = {L2: self.redis.enabled}
        if self.store is not None:
            tiers[STORE] = True
        return {tier: used for tier, used in tiers.items() if used}

    async def put(self, key: str, data: bytes, suffix: str = WAV_SUFFIX) -> bool:
        """Store everywhere; True when a tier that outlives this process holds it."""
        name = entry_name(key, suffix)
        self.memory.put(name, data)
        writes = [self.redis.put(name, data), self.disk.put(name, data)]
        if self.store is not None:
            writes.append(self.store.put(name, data, self._content_type(name)))
        in_redis, on_disk, *in_store = await asyncio.gather(*writes)
        self._refreshed[name] = True
        stored = {L2: in_redis, STORE: bool(in_store and in_store[0])}
        missed = frozenset(tier for tier in self._shared() if not stored[tier])
        if missed and on_disk and self.journal is not None:
            await self.journal.add(name, missed)
        if self.store is not None:
            self._store_refreshed[name] = True
            return stored[STORE] or in_redis
        return in_redis or on_disk

    async def direct_url(
        self, key: str, suffix: str = WAV_SUFFIX
    ) -> tuple[str, datetime.datetime | None] | None:
        """A URL in the object store (public base or presigned) for clients to fetch directly.

        None while the store is out: the entry may be only in Redis, and our own URL serves it.
        """
        if self.store is None or self.store.state != "ok":
            return None
        return await self.store.url(entry_name(key, suffix))

    async def replay(self) -> int:
        """Write journaled entries to the shared tiers that lacked them, if they answer now."""
        if self.journal is None:
            return 0
        written = 0
        for name, tiers in await self.journal.pending():
            data = await self.disk.get(name)
            if data is None:
                logger.warning("journaled entry {} is gone from the disk; dropped", name)
                await self.journal.discard(name)
                continue
            remaining = []
            for tier in tiers:
                if tier == L2:
                    ok = await self.redis.put(name, data)
                elif tier == STORE and self.store is not None:
                    ok = await self.store.put(name, data, self._content_type(name))
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

    def keep_alive(self, key: str, data: bytes, suffix: str = WAV_SUFFIX) -> None:
        """A URL was handed out again: restart its expiry in the shared tiers.

        Redis and the disk at most once a minute; the object store at most once per
        s3.refresh_interval_s, because its refresh is a copy of the object onto itself.
        """
        name = entry_name(key, suffix)
        local = name not in self._refreshed
        remote = self.store is not None and name not in self._store_refreshed
        if local:
            self._refreshed[name] = True
        if remote:
            self._store_refreshed[name] = True
        if local or remote:
            self._spawn(self._keep_alive(name, data, local, remote))

    async def _keep_alive(self, name: str, data: bytes, local: bool, remote: bool) -> None:
        if local:
            if not await self.disk.touch(name):
                await self.disk.put(name, data)
            if self.redis.enabled and not await self.redis.touch(name):
                await self.redis.put(name, data)
        if remote and self.store is not None and not await self.store.touch(name):
            await self.store.put(name, data, self._content_type(name))

    def _names(self, key: str) -> list[str]:
        return [entry_name(key, suffix) for suffix in self._content_types]

    async def delete(self, key: str) -> None:
        """Remove a key's entries from every tier, other workers' and replicas' L1 included."""
        self._forget(key)
        names = self._names(key)
        deletes = [self.redis.delete(*names), self.disk.delete(key)]
        if self.store is not None:
            deletes += [self.store.delete(name) for name in names]
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
            for name in self._names(key):
                self.memory.delete(name)
                self._refreshed.pop(name, None)
                self._store_refreshed.pop(name, None)

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
