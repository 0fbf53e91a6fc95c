"""`/admin/...`: storage statistics, clean-up, deletion and purge, effective configuration.

Off (404) unless admin keys are configured; every call needs a valid `X-API-Key`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from server.cache.keys import is_key
from server.errors import NotFound, Unauthorized
from server.handlers.audio import HASH_PARAMETER
from server.handlers.base import BaseHandler
from server.openapi import Reply, operation
from server.schemas import (
    Cleanup,
    Deleted,
    EffectiveConfig,
    PurgeAll,
    Purged,
    PurgedAll,
    PurgeOne,
    RedisRuntime,
    Runtime,
    SchedulerCounters,
    StorageStats,
    dump,
    validate_purge,
)
from server.settings import SECRET_FIELDS, Settings

MASK = "****"
ADMIN_ERRORS = (401, 404)
OBJECT = {"application/json": {"type": "object"}}


def admin_operation(operation_id: str, description: str, content: Any, **declared: Any) -> Any:
    """An admin operation: needs the API key, answers 401 without it and 404 when admin is off."""
    errors = declared.pop("errors", ADMIN_ERRORS)
    return operation(
        operation_id=operation_id,
        admin=True,
        replies={200: Reply(description, {"application/json": content})},
        errors=errors,
        **declared,
    )


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective configuration with secrets (admin keys, passwords in URLs) masked."""
    config = settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))
    url = config["redis"]["url"]
    if url:
        parts = urlsplit(url)
        if parts.password or parts.username:
            host = parts.netloc.rpartition("@")[2]
            config["redis"]["url"] = urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))
    config["admin_api_keys"] = f"{len(settings.admin_api_keys)} configured"
    config["api_keys"] = f"{len(settings.api_keys)} configured"
    return config


class AdminHandler(BaseHandler):
    route = "/admin"

    def prepare(self) -> None:
        super().prepare()
        keyring = self.services.keyring
        if not keyring.enabled:
            raise NotFound("no such route")
        if not keyring.matches(self.request.headers.get("X-API-Key")):
            logger.bind(request_id=self.request_id, client=self.client_address).warning(
                "admin API: missing or wrong key from {}", self.client_address
            )
            raise Unauthorized(
                "a valid X-API-Key header is required",
                headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'},
            )


class StorageHandler(AdminHandler):
    route = "/admin/storage"

    @admin_operation("adminStorage", "Statistics", StorageStats)
    async def get(self) -> None:
        """Audio files on this replica's disk, and this worker's L1 size."""
        stats = await self.services.cache.disk.stats()
        self.write_json(dump(StorageStats(disk=stats, l1_bytes=self.services.cache.memory.size_bytes)))


class CleanupHandler(AdminHandler):
    route = "/admin/cleanup"

    @admin_operation("adminCleanup", "How many files went", Cleanup)
    async def post(self) -> None:
        """Remove expired audio files now."""
        self.write_json(dump(Cleanup(removed=await self.services.cache.disk.clean())))


class AdminAudioHandler(AdminHandler):
    route = "/admin/audio"

    @admin_operation("adminDeleteAudio", "Gone (or was never there)", Deleted, path=HASH_PARAMETER)
    async def delete(self, key: str) -> None:
        """Delete one entry from every tier."""
        if not is_key(key):
            raise NotFound("no such audio")
        await self.services.cache.delete(key)
        self.write_json(dump(Deleted(deleted=key)))


class PurgeHandler(AdminHandler):
    route = "/admin/purge"

    @admin_operation(
        "adminPurge", "Purged", (Purged, PurgedAll), body=(PurgeOne, PurgeAll), errors=(400, *ADMIN_ERRORS)
    )
    async def post(self) -> None:
        """Purge one hash, or everything."""
        body = validate_purge(self.json_fields())
        if isinstance(body, PurgeAll):
            removed = await self.services.cache.purge()
            self.write_json(dump(PurgedAll(purged="all", removed=removed)))
            return
        await self.services.cache.delete(body.hash)
        self.write_json(dump(Purged(purged=body.hash)))


class RuntimeHandler(AdminHandler):
    route = "/admin/runtime"

    @admin_operation("adminRuntime", "Counters", Runtime)
    def get(self) -> None:
        """This worker's moving parts (tasks, slots, connections), to spot leaks."""
        services = self.services
        scheduler = services.scheduler
        runtime = Runtime(
            pid=os.getpid(),
            rss_bytes=resident_bytes(),
            asyncio_tasks=len(asyncio.all_tasks()),
            in_flight_requests=services.lifecycle.in_flight,
            syntheses=services.speech.flights,
            scheduler=SchedulerCounters(
                admitted=scheduler.active, queued=scheduler.queued, running=scheduler.running
            ),
            open_streams=sum(services.streams_by_client.values()),
            redis=RedisRuntime(state=services.cache.redis.state, pool=services.cache.redis.pool_stats()),
            l1_bytes=services.cache.memory.size_bytes,
            answers=None if (memo := self.application.settings.get("answers")) is None else len(memo),
        )
        self.write_json(dump(runtime))


def resident_bytes() -> int:
    """Resident set size from /proc (Linux) without another dependency; 0 where unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ConfigHandler(AdminHandler):
    route = "/admin/config"

    @admin_operation("adminConfig", "Configuration", EffectiveConfig)
    def get(self) -> None:
        """The effective configuration, secrets masked."""
        self.write_json(masked_settings(self.services.settings))
