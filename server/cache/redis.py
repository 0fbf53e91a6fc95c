"""L2: Redis shared by all replicas, with explicit timeouts, no retries and a circuit breaker.

Redis only ever speeds things up: every call here returns "miss" or "not stored" on any failure,
never raises. Values are raw bytes with a small verified header (magic, length, crc32), so a
truncated or foreign value is a miss, never served. The client is created inside each worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final
from urllib.parse import urlsplit

from loguru import logger
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError

from server.settings import RedisSettings

MAGIC: Final = b"TTS1"
# Release a lock only if it is still ours: a holder whose lock expired must not free another's.
_RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
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


def connect(settings: RedisSettings) -> Any:
    """A client for a single node, a Sentinel-managed master or a Cluster, chosen by URL scheme.

    redis:// rediss:// unix://                  a single node
    redis+sentinel://h1:26379,h2:26379/name/0    the master Sentinel names `name`, db 0
    redis+cluster://h1:6379                       Redis Cluster, nodes discovered from h1
    """
    timeout = settings.timeout_s
    # redis-py's defaults (5 s timeouts, retries with backoff) turn one call against a hung
    # server into about a minute; fail fast and let the breaker decide.
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "max_connections": settings.max_connections,
    }
    url = settings.url
    scheme, _, rest = url.partition("://")
    if scheme in ("redis+cluster", "rediss+cluster"):
        options.pop("retry_on_timeout")
        return RedisCluster.from_url(f"{scheme.split('+')[0]}://{rest}", **options)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        parts = urlsplit(url)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel URL needs a service name: redis+sentinel://host:port/name")
        hosts = [h.rsplit(":", 1) for h in parts.netloc.rpartition("@")[2].split(",")]
        sentinel = Sentinel(
            [(host, int(port)) for host, port in hosts],
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            password=parts.password,
            username=parts.username,
            db=int(path[1]) if len(path) > 1 else 0,
            ssl=scheme.startswith("rediss"),
            **options,
        )
        return sentinel.master_for(path[0])
    # A blocking pool makes a burst of lookups wait (up to the timeout) for a free connection;
    # the default pool raises at once when all are busy, which would look like an outage.
    pool = BlockingConnectionPool.from_url(url, timeout=timeout, health_check_interval=30, **options)
    return Redis(connection_pool=pool)


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
            self._client = connect(self._settings)
        return self._client

    def _key(self, name: str) -> str:
        return f"{self._settings.key_prefix}audio:{name}"

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

    async def _call(self, coro_factory, budget_s: float | None = None):
        if not self._allowed():
            return None, False
        try:
            # wait_for runs the command in its own task. Awaited directly, redis-py 8 sometimes
            # swallows a cancellation that lands mid-command, so a cancelled synthesis (client
            # gone) would carry on; through wait_for the caller's cancellation always wins.
            result = await asyncio.wait_for(
                coro_factory(self._redis()), budget_s or self._settings.timeout_s * 2
            )
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for returns the result when it lands together with a
                # cancellation, dropping the cancellation: honour it here.
                raise asyncio.CancelledError
        except asyncio.CancelledError:
            raise
        except MaxConnectionsError:
            return None, False  # our own pool is busy (Sentinel, Cluster): a miss, not an outage
        except Exception as exc:
            self._failed(exc)
            if not self._allowed():
                await self._disconnect_pool()
            return None, False
        self._succeeded()
        return result, True

    async def _disconnect_pool(self) -> None:
        # Idle pooled connections opened before an outage each fail once when reused, and each
        # such failure would re-open the breaker after Redis is back: start afresh instead.
        pool = getattr(self._client, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect()

    async def get(self, name: str) -> bytes | None:
        value, ok = await self._call(lambda r: r.get(self._key(name)))
        if not ok or value is None:
            return None
        payload = unframe(value)
        if payload is None:
            logger.warning("corrupt L2 entry {} ignored", name)
        return payload

    async def put(self, name: str, payload: bytes, ttl_s: int | None = None) -> bool:
        ttl = ttl_s or self._settings.ttl_s
        _, ok = await self._call(lambda r: r.set(self._key(name), frame(payload), ex=ttl))
        return ok

    async def touch(self, name: str) -> bool:
        value, ok = await self._call(lambda r: r.expire(self._key(name), self._settings.ttl_s))
        return ok and bool(value)

    async def delete(self, *names: str) -> bool:
        _, ok = await self._call(lambda r: r.delete(*(self._key(name) for name in names)))
        return ok

    async def acquire_lock(self, key: str, token: str, ttl_s: float) -> bool | None:
        """SET NX with an expiry: True if acquired, False if held elsewhere, None if Redis is out."""
        value, ok = await self._call(
            lambda r: r.set(self._lock_key(key), token, nx=True, px=int(ttl_s * 1000))
        )
        return bool(value) if ok else None

    async def lock_held(self, key: str) -> bool | None:
        value, ok = await self._call(lambda r: r.exists(self._lock_key(key)))
        return bool(value) if ok else None

    async def extend_lock(self, key: str, ttl_s: float) -> None:
        await self._call(lambda r: r.pexpire(self._lock_key(key), int(ttl_s * 1000)))

    async def release_lock(self, key: str, token: str) -> None:
        await self._call(lambda r: r.eval(_RELEASE, 1, self._lock_key(key), token))

    async def eval(self, script: str, key: str, *args: object) -> Any:
        """Run a Lua script on one key under this service's prefix; None when Redis is out."""
        value, ok = await self._call(lambda r: r.eval(script, 1, f"{self._settings.key_prefix}{key}", *args))
        return value if ok else None

    def _lock_key(self, key: str) -> str:
        return f"{self._settings.key_prefix}lock:{key}"

    async def purge(self) -> int:
        """Delete every audio entry under this service's prefix (SCAN, never KEYS)."""

        async def scan_and_delete(r: Any) -> int:
            removed = 0
            async for name in r.scan_iter(match=f"{self._settings.key_prefix}audio:*", count=500):
                removed += await r.delete(name)
            return removed

        # A purge walks the whole keyspace: it gets a longer budget than one command.
        value, ok = await self._call(scan_and_delete, budget_s=60.0)
        return int(value) if ok else 0

    async def publish(self, channel: str, message: str) -> bool:
        _, ok = await self._call(lambda r: r.publish(f"{self._settings.key_prefix}{channel}", message))
        return ok

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        """Messages on a channel, for as long as the caller iterates; reconnects by itself."""
        name = f"{self._settings.key_prefix}{channel}"
        while True:
            if not self._allowed():  # the breaker is open: leave Redis alone until it closes
                await asyncio.sleep(self._settings.breaker_reset_s)
                continue
            try:
                pubsub = self._redis().pubsub()
                await pubsub.subscribe(name)
                try:
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise asyncio.CancelledError  # redis-py swallowed it (see _call)
                        if message is not None and message.get("type") == "message":
                            data = message["data"]
                            yield data.decode() if isinstance(data, bytes) else str(data)
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception:  # any failure: wait and subscribe again
                await asyncio.sleep(self._settings.breaker_reset_s)

    def pool_stats(self) -> dict[str, int] | None:
        """Connections in use and idle (single-node and Sentinel clients), for leak checks."""
        pool = getattr(self._client, "connection_pool", None)
        if pool is None:
            return None
        # redis-py keeps no public counters; these two containers are its pool's whole state.
        return {
            "in_use": len(getattr(pool, "_in_use_connections", ())),
            "idle": len(getattr(pool, "_available_connections", ())),
        }

    async def ping(self) -> bool:
        _, ok = await self._call(lambda r: r.ping())
        return ok

    async def close(self) -> None:
        if self._client is not None:
            if isinstance(self._client, Redis):
                # The client was given its pool, so it would not close it by itself.
                await self._client.aclose(close_connection_pool=True)
            else:
                await self._client.aclose()
            self._client = None
