"""Logging set-up, done once per process by the entry points.

JSON lines by default (one object per line, the fields an operator filters on), readable text
for development. Modules just `from loguru import logger`; request lines carry the request id.
Times are UTC. The access line of each request goes through `access` (see `AccessLog`).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
import traceback
from typing import Any, Final

from loguru import logger

from server.settings import LoggingSettings

_EXTRA_FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "cache",
    "voice",
    "text_chars",
    "client",
)


ACCESS_LOGGER: Final = "server.access"


def _json_sink(message: Any) -> None:
    record = message.record
    entry: dict[str, Any] = {
        "time": record["time"].astimezone(datetime.UTC).isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
        "pid": record["process"].id,
    }
    for name in _EXTRA_FIELDS:
        if name in record["extra"]:
            entry[name] = record["extra"][name]
    if record["exception"] is not None:
        entry["exception"] = "".join(traceback.format_exception(*record["exception"]))
    sys.stderr.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
    sys.stderr.flush()


class AccessLog:
    """Every request's access line as JSON, written without a loguru record.

    A loguru record (the caller's frame, thread, process and time, then our sink's flush of each
    line) was the largest share of the server's own work on an L1 hit, about 35 µs. An access
    line needs none of it: its fields are at hand, so it costs one `json.dumps`. The lines of an
    IOLoop turn are written together when the turn ends (one write for a burst of hits), so none
    waits longer than that. The fields and their order are those of every other JSON line.
    """

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._pid = os.getpid()

    def line(self, message: str, fields: dict[str, Any]) -> None:
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "level": "INFO",
            "message": message,
            "logger": ACCESS_LOGGER,
            "pid": self._pid,
            **fields,
        }
        self._pending.append(json.dumps(entry, ensure_ascii=False, default=str))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a tool, a test): at once
                self.flush()

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()


# Set by configure_logging: an AccessLog for JSON lines at INFO or below, else None.
_access_log: AccessLog | None = None
_access_on = True


def access(message: str, fields: dict[str, Any]) -> None:
    """Log one request's access line (`fields`: request_id, method, path, status, ...)."""
    if _access_log is not None:
        _access_log.line(message, fields)
    elif _access_on:  # the text format (development), or logging not configured (tools, tests)
        logger.info("{}", message, **fields)


def configure_logging(settings: LoggingSettings) -> None:
    global _access_log, _access_on
    logger.remove()
    _access_on = logger.level(settings.level).no <= logger.level("INFO").no
    _access_log = AccessLog() if settings.format == "json" and _access_on else None
    if settings.format == "json":
        logger.add(_json_sink, level=settings.level, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=settings.level,
            backtrace=False,
            diagnose=False,
            format="<green>{time:HH:mm:ss.SSS}</green> {level: <7} {process} "
            "<cyan>{name}</cyan> {message} <dim>{extra}</dim>",
        )
