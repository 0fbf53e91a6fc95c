"""Reading Wyoming events within bounds.

The wire format is a JSON header line, then `data_length` bytes of JSON data and
`payload_length` bytes of payload. The `wyoming` package's own reader trusts both lengths and
lets a missing `type` raise `KeyError`; a server open to a network reads them here instead, with
every length bounded, and turns anything malformed into one `ProtocolError` that ends only its
connection. The events themselves are the package's `Event` values.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Final

from wyoming.event import Event

MAX_TYPE_CHARS: Final = 64


class ProtocolError(Exception):
    """The peer broke the protocol or a limit; the message is safe to log (no user text)."""


@dataclass(frozen=True)
class Bounds:
    line_bytes: int  # also the StreamReader's limit, so readuntil stops there
    data_bytes: int
    payload_bytes: int


def _length(header: dict[str, Any], name: str, limit: int) -> int:
    value = header.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{name} is not a non-negative integer")
    if value > limit:
        raise ProtocolError(f"{name} {value} is over the limit of {limit}")
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


async def read_event(reader: asyncio.StreamReader, bounds: Bounds) -> Event | None:
    """The next event, or None at a clean end of stream; `ProtocolError` for anything else."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise ProtocolError("connection closed inside an event header") from None
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"event header longer than {bounds.line_bytes} bytes") from None
    header = _json_object(line, "event header")
    event_type = header.get("type")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= MAX_TYPE_CHARS:
        raise ProtocolError("event type is missing or not a short string")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError("event data is not a JSON object")
    data_length = _length(header, "data_length", bounds.data_bytes)
    payload_length = _length(header, "payload_length", bounds.payload_bytes)
    try:
        if data_length:
            data = {**data, **_json_object(await reader.readexactly(data_length), "event data")}
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside an event") from None
    return Event(type=event_type, data=data, payload=payload)
