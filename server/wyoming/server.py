"""The Wyoming listener of one worker, on the worker's asyncio loop (the one Tornado runs on).

Every worker binds `wyoming.host:wyoming.port` with SO_REUSEPORT, so the kernel spreads
connections over the workers as it does for HTTP through gunicorn's shared socket. A peer outside
`wyoming.allowed_networks` is disconnected at once (Wyoming has no authentication). On SIGTERM the
worker stops accepting, waits for open syntheses with its HTTP requests (they count in
`lifecycle.in_flight`), then closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from functools import partial
from typing import TYPE_CHECKING, Final

from loguru import logger
from wyoming.server import AsyncTcpServer

from server.clients import parse_networks
from server.wyoming.discovery import Announcer
from server.wyoming.events import Bounds
from server.wyoming.handler import Connection

if TYPE_CHECKING:
    from server.services import Services

CLOSE_WAIT_S: Final = 2.0


class WyomingServer(AsyncTcpServer):
    def __init__(self, services: Services) -> None:
        settings = services.settings.wyoming
        super().__init__(settings.host, settings.port)
        self.services = services
        self.settings = settings
        self.bounds = Bounds(settings.max_line_bytes, settings.max_data_bytes, settings.max_payload_bytes)
        self._networks = parse_networks(settings.allowed_networks)
        self._announcing: asyncio.Task[None] | None = None

    def allows(self, peer: str) -> bool:
        """Whether a peer address is in `wyoming.allowed_networks` (IPv4-mapped IPv6 as IPv4)."""
        try:
            address = ipaddress.ip_address(peer.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    async def start(self, handler_factory=None) -> None:  # type: ignore[no-untyped-def, override]
        """Listen (with SO_REUSEPORT, beside the other workers) and serve in the background."""
        callback = partial(self._handler_callback, partial(Connection, owner=self))
        # `limit` bounds what the reader buffers while it looks for the end of a header line.
        self._server = await asyncio.start_server(
            callback, host=self.host, port=self.port, reuse_port=True, limit=self.bounds.line_bytes
        )
        logger.info("wyoming listening on {}:{}", self.host, self.port)
        if self.settings.zeroconf:
            self._announcing = asyncio.ensure_future(self._announce())

    async def _announce(self) -> None:
        try:
            await Announcer(self.settings).run()
        except OSError as exc:  # no multicast route, say: the server works, only undiscovered
            logger.error("wyoming zeroconf announcement failed: {}", exc)

    def stop_accepting(self) -> None:
        """Drain: no new connections; open ones go on."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Close every connection (cancelling what is left of its synthesis) and wait for them."""
        if self._announcing is not None:
            self._announcing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcing
        await self.stop()
        tasks = list(self._handlers)
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
