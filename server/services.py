"""The services one worker owns, built after the fork and started on its IOLoop.

`Services.build(settings)` only constructs objects (cheap, no I/O); `start()` loads and warms the
voices in a thread so `/healthz` answers meanwhile, and runs the audio clean-up in the background;
`close()` releases everything. Handlers reach these through the application's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from loguru import logger

from server.audio.formats import rendition_content_types
from server.auth import KeyRing
from server.cache.disk import DiskStore
from server.cache.journal import Journal
from server.cache.memory import MemoryCache
from server.cache.redis import RedisCache
from server.cache.s3 import ObjectStore, StoreMisconfigured
from server.cache.tiers import WORDS_SUFFIX, TieredCache
from server.clients import Network, default_allowed_hosts, host_name, parse_networks
from server.jobs.service import JobService
from server.memory import IdleTrim, trim_heap
from server.metrics import Metrics
from server.ratelimit import RateLimiter
from server.renditions import Renditions
from server.settings import Settings
from server.speech import SpeechService
from server.synthesis.catalog import VoiceCatalog
from server.synthesis.scheduler import Scheduler

# How long closing waits for the background tasks to end, cancelling again meanwhile.
CLOSE_WAIT_S: Final = 2.0
CANCEL_AGAIN_S: Final = 0.1


async def cancel_and_wait(tasks: list[asyncio.Task[None]], wait_s: float = CLOSE_WAIT_S) -> None:
    """Cancel `tasks` and wait for them to end, cancelling again any that carry on.

    redis-py sometimes swallows a cancellation that lands mid-command (see cache/redis.py), and a
    loop that lost its cancellation goes on: the invalidation subscriber, for one, calls redis-py
    directly. One cancel and an unbounded wait could then hold a SIGTERM's shutdown for ever; a
    task still running after `wait_s` is left behind (logged), as the process is ending anyway.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    pending = {task for task in tasks if not task.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(CANCEL_AGAIN_S, deadline - loop.time()))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.warning("background task {} ended with {!r}", task.get_name(), task.exception())
    if pending:
        logger.warning("{} background tasks did not end within {}s of closing", len(pending), wait_s)


@dataclass
class Lifecycle:
    """What the probes report: loading, ready, or draining before shutdown."""

    draining: bool = False
    in_flight: int = 0  # requests being handled, streams included
    # The heap goes back once no request is in flight and no synthesis runs (see Services.build).
    trim: IdleTrim = field(default_factory=lambda: IdleTrim(lambda: True))
    started_at: float = field(default_factory=time.time)  # the `created` of /v1/models


@dataclass
class Services:
    settings: Settings
    catalog: VoiceCatalog
    cache: TieredCache
    scheduler: Scheduler
    speech: SpeechService
    renditions: Renditions
    metrics: Metrics
    lifecycle: Lifecycle
    keyring: KeyRing
    limiter: RateLimiter
    trusted_proxies: tuple[Network, ...]
    allowed_hosts: frozenset[str]
    api_keys: KeyRing  # public keys for /tts*, /audio*, /v1/*; off when none are configured
    jobs: JobService | None = None  # /jobs; its queue runs in this worker once the voices are loaded
    streams_by_client: Counter[str] = field(default_factory=Counter)
    warmed: bool = False  # the warm-up after loading is over (see _warm_up)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        metrics = Metrics()
        catalog = VoiceCatalog(settings)
        redis = RedisCache(settings.redis, on_error=metrics.redis_errors.inc)
        store = ObjectStore(
            settings.s3, enabled=settings.storage.backend == "s3", on_error=metrics.store_errors.inc
        )
        disk = DiskStore(settings.storage)
        journal = Journal(
            disk.root, settings.storage.journal_max_entries, on_drop=metrics.journal_dropped.inc
        )
        cache = TieredCache(
            MemoryCache(settings.cache.l1_max_bytes),
            redis,
            disk,
            store,
            journal,
            store_refresh_s=settings.s3.refresh_interval_s,
            content_types={**rendition_content_types(), WORDS_SUFFIX: "application/json"},
            on_replay=lambda tier: metrics.journal_replayed.labels(tier).inc(),
        )
        synthesis = settings.synthesis
        scheduler = Scheduler(
            synthesis.concurrency,
            synthesis.max_active_requests,
            window_s=synthesis.batch_window_ms / 1000,
            max_padding=synthesis.batch_max_padding,
        )
        limiter = RateLimiter(settings.limits, redis)
        lifecycle = Lifecycle(trim=IdleTrim(lambda: not lifecycle.in_flight and not speech.flights))
        speech = SpeechService(
            synthesis,
            catalog,
            cache,
            scheduler,
            metrics,
            limiter,
            lock_ttl_s=settings.redis.lock_ttl_s,
            text=settings.text,
            on_idle=lifecycle.trim.idle,
        )
        renditions = Renditions(speech, cache, metrics, settings.audio)
        return cls(
            settings,
            catalog,
            cache,
            scheduler,
            speech,
            renditions,
            metrics,
            lifecycle,
            KeyRing(settings.admin_api_keys),
            limiter,
            parse_networks(settings.server.trusted_proxies),
            frozenset(host_name(h) for h in settings.server.allowed_hosts) or default_allowed_hosts(),
            KeyRing(settings.api_keys),
            jobs=JobService(settings, speech, cache, metrics, limiter),
        )

    @property
    def ready(self) -> bool:
        store = self.cache.store
        verified = store is None or store.verified
        return self.catalog.ready and self.warmed and not self.lifecycle.draining and verified

    async def start(self) -> None:
        """Load voices off the loop; failures leave the worker alive but unready, and logged."""
        self._tasks.append(asyncio.ensure_future(self._clean_periodically()))
        self._tasks.append(asyncio.ensure_future(self.cache.follow_invalidations()))
        self._tasks.append(asyncio.ensure_future(self._probe_periodically()))
        if self.cache.store is not None:
            self._tasks.append(asyncio.ensure_future(self._check_store()))
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.catalog.load)
        except Exception as exc:
            self.catalog.problem = f"voice loading failed: {exc}"
            logger.exception("voice loading failed")
        if self.catalog.ready:
            await self._warm_up()
        self.warmed = True
        self.speech.loaded()
        if self.jobs is not None and self.catalog.ready:
            try:
                await self.jobs.start()
            except Exception:
                logger.exception("the job queue did not start")

    async def _warm_up(self) -> None:
        """Run the text front-end and every encoder once, so that a new worker's first requests
        are as fast as its later ones (its first mp3 stream measured 130 to 215 ms to first audio,
        later ones about 70). A worker that fails to warm up still serves, only slower at first.
        """
        started = time.perf_counter()
        try:
            await self.speech.warm_up()
            await self.renditions.warm_up()
        except Exception:
            logger.exception("warm-up failed: the first requests will be slower")
        await asyncio.get_running_loop().run_in_executor(None, trim_heap)  # the warm-up's garbage
        logger.info("warmed up in {:.0f} ms", 1000 * (time.perf_counter() - started))

    async def _probe_periodically(self) -> None:
        """PING Redis every few seconds, so /readyz follows Redis whatever traffic we see.

        The ping goes through the same timeouts and breaker as every other call: while the
        breaker is open it is skipped, and the first ping after it closes restores `ok`.
        """
        interval = self.settings.redis.probe_interval_s
        while True:
            if self.cache.redis.enabled:
                await self.cache.redis.ping()
            try:
                await self.cache.replay()  # entries minted during an outage, now that tiers may be back
            except OSError as exc:
                logger.warning("journal replay failed: {}", exc)
            await asyncio.sleep(interval)

    async def _check_store(self) -> None:
        """Until the bucket answers, stay unready and retry with backoff; then probe it like Redis.

        A restart during a store outage must not take the fleet down, so unreachable never exits;
        a missing or forbidden bucket was already refused before the workers started.
        """
        store = self.cache.store
        assert store is not None
        delay = 0.5
        while not store.verified:
            try:
                if await store.check():
                    logger.info("object store ready: {}", store.where)
                    break
            except StoreMisconfigured as exc:
                logger.error("{}", exc)  # it went away after start-up: report, keep retrying
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        while True:
            await asyncio.sleep(self.settings.redis.probe_interval_s)
            with contextlib.suppress(StoreMisconfigured):
                await store.check()

    async def _clean_periodically(self) -> None:
        interval = self.settings.storage.cleanup_interval_s
        while True:
            try:
                await self.cache.disk.clean()
            except OSError as exc:
                logger.warning("audio clean-up failed: {}", exc)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self.jobs is not None:
            await self.jobs.close()
        await self.renditions.close()
        await self.speech.close()
        await self.cache.close()
        self.scheduler.shutdown()
