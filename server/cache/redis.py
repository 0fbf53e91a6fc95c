"""L2: Redis shared by all replicas, with explicit timeouts, no retries and a circuit breaker.

Redis only ever speeds things up: every call here returns "miss" or "not stored" on any failure,
never raises. Values are raw bytes with a small verified header (magic, length, crc32), so a
truncated or foreign value is a miss, never served. The client is created inside each worker.
"""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from collections.abc import Callable
from typing import Final

from loguru import logger
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.settings import RedisSettings

MAGIC: Final = b"TTS1"
HEADER: Final = struct.Struct("<4sQI")  # magic, payload length, crc32


def frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def unframe(value: bytes) -> bytes | None:
    """The payload, or None when the value is not an intact frame."""
    if len(value) < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack_from(value)
    payload = value[HEADER.size :]
    if magic != MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
        return None
    return payload


class RedisCache:
    """A best-effort byte store in Redis; `state` is ok, degraded or disabled."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._on_error = on_error
        self._clock = clock
        self._client: Redis | None = None
        self._failures = 0
        self._open_until = 0.0
        self._degraded = False
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return bool(self._settings.url)

    @property
    def state(self) -> str:
        if not self.enabled:
            return "disabled"
        return "degraded" if self._degraded else "ok"

    def _redis(self) -> Redis:
        if self._client is None:
            timeout = self._settings.timeout_s
            # redis-py's defaults (5 s timeouts, retries with backoff) turn one call against a
            # hung server into about a minute; fail fast and let the breaker decide.
            self._client = Redis.from_url(
                self._settings.url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                max_connections=self._settings.max_connections,
                health_check_interval=30,
            )
        return self._client

    def _key(self, key: str) -> str:
        return f"{self._settings.key_prefix}audio:{key}"

    def _allowed(self) -> bool:
        # Half-open: once the breaker's time is up, calls go through again and the first
        # success closes it; failures re-open it for another period.
        return self.enabled and self._clock() >= self._open_until

    def _succeeded(self) -> None:
        self._failures = 0
        if self._degraded:
            self._degraded = False
            logger.info("redis is reachable again")

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._on_error()
        self._failures += 1
        if not self._degraded:
            self._degraded = True
            logger.warning("redis unavailable, serving from L1 and disk: {}", type(exc).__name__)
        if self._failures >= self._settings.breaker_failures:
            self._open_until = self._clock() + self._settings.breaker_reset_s

    async def _call(self, coro_factory):
        if not self._allowed():
            return None, False
        try:
            async with asyncio.timeout(self._settings.timeout_s * 2):
                result = await coro_factory(self._redis())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            return None, False
        self._succeeded()
        return result, True

    async def get(self, key: str) -> bytes | None:
        value, ok = await self._call(lambda r: r.get(self._key(key)))
        if not ok or value is None:
            return None
        payload = unframe(value)
        if payload is None:
            logger.warning("corrupt L2 entry {} ignored", key)
        return payload

    async def put(self, key: str, payload: bytes, ttl_s: int | None = None) -> bool:
        ttl = ttl_s or self._settings.ttl_s
        _, ok = await self._call(lambda r: r.set(self._key(key), frame(payload), ex=ttl))
        return ok

    async def touch(self, key: str) -> bool:
        value, ok = await self._call(lambda r: r.expire(self._key(key), self._settings.ttl_s))
        return ok and bool(value)

    async def delete(self, key: str) -> bool:
        _, ok = await self._call(lambda r: r.delete(self._key(key)))
        return ok

    async def ping(self) -> bool:
        _, ok = await self._call(lambda r: r.ping())
        return ok

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
