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
from server.errors import InvalidRequest, NotFound, Unauthorized
from server.handlers.base import BaseHandler
from server.settings import SECRET_FIELDS, Settings

MASK = "****"


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

    async def get(self) -> None:
        """Audio files on this replica's disk, and this worker's L1 size."""
        stats = await self.services.cache.disk.stats()
        self.write_json({"disk": stats, "l1_bytes": self.services.cache.memory.size_bytes})


class CleanupHandler(AdminHandler):
    route = "/admin/cleanup"

    async def post(self) -> None:
        """Remove expired audio files now."""
        self.write_json({"removed": await self.services.cache.disk.clean()})


class AdminAudioHandler(AdminHandler):
    route = "/admin/audio"

    async def delete(self, key: str) -> None:
        """Delete one entry from every tier."""
        if not is_key(key):
            raise NotFound("no such audio")
        await self.services.cache.delete(key)
        self.write_json({"deleted": key})


class PurgeHandler(AdminHandler):
    route = "/admin/purge"

    async def post(self) -> None:
        """Purge one hash (`{"hash": ...}`) or everything (`{"all": true}`)."""
        body = self.json_fields()
        if body.get("all") is True and set(body) == {"all"}:
            removed = await self.services.cache.purge()
            self.write_json({"purged": "all", "removed": removed})
            return
        key = body.get("hash")
        if set(body) != {"hash"} or not isinstance(key, str) or not is_key(key):
            raise InvalidRequest('the body must be {"hash": "<64 hex digits>"} or {"all": true}')
        await self.services.cache.delete(key)
        self.write_json({"purged": key})


class RuntimeHandler(AdminHandler):
    route = "/admin/runtime"

    def get(self) -> None:
        """This worker's moving parts, to check that nothing leaks (tasks, slots, connections)."""
        services = self.services
        scheduler = services.scheduler
        self.write_json(
            {
                "pid": os.getpid(),
                "rss_bytes": resident_bytes(),
                "asyncio_tasks": len(asyncio.all_tasks()),
                "in_flight_requests": services.lifecycle.in_flight,
                "syntheses": services.speech.flights,
                "scheduler": {
                    "admitted": scheduler.active,
                    "queued": scheduler.queued,
                    "running": scheduler.running,
                },
                "open_streams": sum(services.streams_by_client.values()),
                "redis": {"state": services.cache.redis.state, "pool": services.cache.redis.pool_stats()},
                "l1_bytes": services.cache.memory.size_bytes,
            }
        )


def resident_bytes() -> int:
    """Resident set size from /proc (Linux) without another dependency; 0 where unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ConfigHandler(AdminHandler):
    route = "/admin/config"

    def get(self) -> None:
        """The effective configuration, secrets masked."""
        self.write_json(masked_settings(self.services.settings))
