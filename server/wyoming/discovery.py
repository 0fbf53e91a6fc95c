"""Zeroconf (mDNS) announcement of the Wyoming port, so Home Assistant finds the server by itself.

Every worker runs the Wyoming listener, but the server must be announced once: the workers
compete for an exclusive lock on a file named after the port, and the one that holds it
announces `_wyoming._tcp.local.` until it exits. The kernel releases the lock with the process,
so when that worker is replaced another one takes over at its next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import Final

from loguru import logger
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from server.settings import WyomingSettings

SERVICE_TYPE: Final = "_wyoming._tcp.local."
RETRY_S: Final = 5.0
MDNS_GROUP: Final = "224.0.0.251"  # only to learn which interface address routes there


def lock_path(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"tts-wyoming-{port}.announce.lock"


def take_lock(path: Path) -> int | None:
    """An open descriptor holding the exclusive lock on `path`, or None if another process has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def announced_address(host: str) -> str:
    """The address to announce: the configured one, or the one that routes to the mDNS group."""
    if host not in ("", "0.0.0.0", "::"):
        return socket.gethostbyname(host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((MDNS_GROUP, 1))  # UDP connect sends nothing; it only picks a route
        return str(probe.getsockname()[0])


class Announcer:
    """While it runs, this worker announces the server if no other worker of it does."""

    def __init__(self, settings: WyomingSettings) -> None:
        self._settings = settings
        self._name = settings.zeroconf_name or socket.gethostname().split(".")[0]

    async def run(self) -> None:
        lock = None
        while lock is None:
            lock = take_lock(lock_path(self._settings.port))
            if lock is None:
                await asyncio.sleep(RETRY_S)
        zeroconf = AsyncZeroconf()
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self._name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(announced_address(self._settings.host))],
            port=self._settings.port,
            server=f"{self._name}.local.",
        )
        try:
            await zeroconf.async_register_service(info)
            logger.info("wyoming announced over zeroconf as {}", self._name)
            await asyncio.Event().wait()  # until cancelled at shutdown
        finally:
            with contextlib.suppress(Exception):  # best effort: the process is going away
                await zeroconf.async_unregister_service(info)
            await zeroconf.async_close()
            os.close(lock)
