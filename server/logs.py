"""Logging set-up, done once per process by the entry points.

JSON lines by default (one object per line, the fields an operator filters on), readable text
for development. Modules just `from loguru import logger`; request lines carry the request id.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

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


def _json_sink(message: Any) -> None:
    record = message.record
    entry: dict[str, Any] = {
        "time": record["time"].isoformat(),
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


def configure_logging(settings: LoggingSettings) -> None:
    logger.remove()
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
