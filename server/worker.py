"""Running the app: the gunicorn worker with a graceful drain, and the entry points.

gunicorn loads `create_app()` in each worker after the fork, so the onnxruntime sessions and the
Redis client are made per process, never in the master. Its stock tornado worker stops the server
and the loop within about two heartbeats of SIGTERM, cutting streams short whatever
graceful_timeout says; `GracefulTornadoWorker` instead stops accepting, reports 503 on `/readyz`,
waits until no request is in flight or the grace period ends, and only then closes connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import tornado.web
from gunicorn.workers.base import Worker
from loguru import logger
from tornado.httpserver import HTTPServer

from server.settings import Settings, SettingsError, jobs_max_body_bytes, load_settings

if TYPE_CHECKING:
    from server.services import Services
    from server.wyoming.server import WyomingServer

TICK_S = 0.25
# Past this Tornado can only drop the connection; up to it, BaseHandler answers 414 or 431 against
# server.max_header_bytes with a JSON error.
HEADER_HARD_CAP_BYTES = 1 << 20


def create_app() -> tornado.web.Application:
    """The gunicorn entry point: settings from config.yaml and the environment, then the app."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    # Imported here, not at the top: the gunicorn master imports this module for the worker class,
    # and onnxruntime (with numpy's OpenBLAS) starts threads on import; a worker forked from a
    # process holding them aborts at exit ("std::system_error: Invalid argument").
    from server.app import make_app
    from server.logs import configure_logging
    from server.services import Services

    configure_logging(settings.logging)
    return make_app(settings, Services.build(settings))


def make_http_server(app: tornado.web.Application, settings: Settings) -> HTTPServer:
    """Tornado's defaults are loose (an hour for headers, no body timeout, 100 MiB bodies)."""
    from server.handlers.answers import AnswerFront  # with the app's modules (see make_app above)

    server = settings.server
    # POST /jobs takes whole documents: its own, larger body limit (enforced by its handler).
    largest = max(server.max_body_bytes, jobs_max_body_bytes(settings))
    # Answers of L1 hits are sent again from in front of the app where they may be.
    memo = app.settings.get("answers")
    return HTTPServer(
        app if memo is None else AnswerFront(app, memo, app.settings["services"]),
        # Bodies up to this are read and answered with a JSON 413 by the handler (max_body_bytes
        # is enforced there); past it Tornado can only drop the connection without an answer.
        max_body_size=max(4 * server.max_body_bytes, largest, 1 << 20),
        max_buffer_size=max(largest, 1 << 20),
        max_header_size=max(HEADER_HARD_CAP_BYTES, 4 * server.max_header_bytes),
        idle_connection_timeout=server.idle_connection_timeout_s,
        body_timeout=server.body_timeout_s,
    )


async def serve(
    app: tornado.web.Application, sockets: Iterable[socket.socket], keep_running: Callable[[], bool]
) -> None:
    """Serve on `sockets` until `keep_running()` turns false, then drain gracefully."""
    services: Services = app.settings["services"]
    settings = services.settings
    server = make_http_server(app, settings)
    for sock in sockets:
        sock.setblocking(False)
        server.add_socket(sock)
    startup = asyncio.ensure_future(services.start())
    wyoming = await start_wyoming(services)
    try:
        while keep_running():
            await asyncio.sleep(TICK_S)
    finally:
        await drain(server, services, settings.server.graceful_timeout_s, wyoming)
        startup.cancel()


async def start_wyoming(services: Services) -> WyomingServer | None:
    """The Wyoming front door on this loop, when enabled; a port it cannot bind leaves HTTP up."""
    if not services.settings.wyoming.enabled:
        return None
    from server.wyoming.server import WyomingServer

    wyoming = WyomingServer(services)
    try:
        await wyoming.start()
    except OSError as exc:
        logger.error("wyoming cannot listen on {}:{}: {}", wyoming.host, wyoming.port, exc)
        return None
    return wyoming


async def drain(
    server: HTTPServer, services: Services, grace_s: float, wyoming: WyomingServer | None = None
) -> None:
    lifecycle = services.lifecycle
    lifecycle.draining = True
    server.stop()  # no new connections; in-flight requests and streams go on
    if wyoming is not None:
        wyoming.stop_accepting()  # its open syntheses count in lifecycle.in_flight
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    logger.info("draining: {} requests in flight, up to {}s", lifecycle.in_flight, grace_s)
    # Flights too: a stream ends when its last chunk is sent, before its WAV is stored (and its
    # Redis lock released); closing the services then would cancel that and lose the audio.
    speech = services.speech
    while (lifecycle.in_flight > 0 or speech.flights > 0) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if lifecycle.in_flight or speech.flights:
        logger.warning(
            "grace period over with {} requests and {} syntheses in flight",
            lifecycle.in_flight,
            speech.flights,
        )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), timeout=1.0)
    if wyoming is not None:
        await wyoming.close()
    await services.close()
    logger.info("stopped")


class GracefulTornadoWorker(Worker):
    """gunicorn worker running the Tornado app with the drain above."""

    def init_process(self) -> None:
        tornado.ioloop.IOLoop.clear_current()
        super().init_process()

    def run(self) -> None:
        app = self.wsgi
        if not isinstance(app, tornado.web.Application):
            raise TypeError("GracefulTornadoWorker serves a tornado.web.Application")
        asyncio.run(serve(app, self.sockets, self._keep_running))

    def _keep_running(self) -> bool:
        self.notify()  # the master's liveness check
        if self.ppid != os.getppid():
            logger.info("parent changed, shutting down")
            return False
        return self.alive
