"""`python -m server`: one process, no gunicorn (development and tools); same drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from tornado.netutil import bind_sockets

from server.app import make_app
from server.cache.s3 import StoreMisconfigured, check_bucket
from server.logs import configure_logging
from server.memory import limit_malloc_arenas
from server.private_redis import PrivateRedis
from server.services import Services
from server.settings import Settings, SettingsError, load_settings, with_overrides
from server.synthesis.files import check_voices
from server.worker import serve


def main() -> None:
    limit_malloc_arenas()  # before any thread starts
    try:
        settings = load_settings()
        for line in check_voices(settings):
            print(line, file=sys.stderr)
        if settings.storage.backend == "s3" and not check_bucket(settings.s3):
            print("object store unreachable; workers stay unready and retry", file=sys.stderr)
    except (SettingsError, StoreMisconfigured) as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.logging)
    private = None
    if settings.redis.url is None:  # no Redis configured: the quick start's own, for L2 and jobs
        private = PrivateRedis(settings.redis.private_socket).start()
        settings = with_overrides(settings, redis={"url": private.url})
    try:
        _serve(settings)
    finally:
        if private is not None:
            private.stop()


def _serve(settings: Settings) -> None:
    sockets = bind_sockets(settings.server.port, settings.server.host)
    app = make_app(settings, Services.build(settings))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await serve(app, sockets, lambda: not stopping)

    asyncio.run(run())


if __name__ == "__main__":
    main()
