"""`/audio/{hash}.{ext}`: stored audio in any format from L1, L2 or disk, with Range and ETag support.

A format that is not stored yet is encoded once from the key's WAV (and stored beside it).
"""

from __future__ import annotations

import re
from typing import Final

from server.audio.formats import BY_EXTENSION, FORMATS, Rendition
from server.cache.tiers import L1
from server.errors import NotFound, RangeNotSatisfiable
from server.handlers.base import BaseHandler
from server.openapi import RATE_LIMIT_HEADERS, Header, Reply, Schema, integer_header, operation
from server.ratelimit import REQUESTS
from server.schemas import HASH_PATTERN

_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")
HASH_PARAMETER: Final = {
    "hash": {"type": "string", "pattern": HASH_PATTERN, "description": "The hash /tts returned"}
}
PATH_PARAMETERS: Final = {
    **HASH_PARAMETER,
    "ext": {
        "type": "string",
        "enum": [f.ext for f in FORMATS.values()],
        "description": "The audio format's extension",
    },
}
CONDITIONS: Final = {
    "Range": Header("One byte range, bytes=START-END, bytes=START- or bytes=-SUFFIX"),
    "If-None-Match": Header("An ETag this client holds"),
    "If-Range": Header("Send the range only if the ETag still matches"),
}
FILE_HEADERS: Final = {
    "ETag": Header("Strong validator of these bytes", True),
    "Accept-Ranges": Header("Single byte ranges are supported", True, {"type": "string", "enum": ["bytes"]}),
    "Cache-Control": Header("Public and immutable for the storage TTL", True),
    "X-Cache": Header("Tier that had it", True, {"type": "string", "enum": ["l1", "l2", "disk", "s3"]}),
    **RATE_LIMIT_HEADERS,
}
LENGTH: Final = {"Content-Length": integer_header("Bytes in the (partial) body", True)}
CONTENT_RANGE: Final = Header(
    "bytes START-END/SIZE", True, {"type": "string", "pattern": r"^bytes \d+-\d+/\d+$"}
)


def audio_content(with_body: bool = True) -> dict[str, Schema]:
    """Every format's content type, each with a binary body (or none, for HEAD)."""
    body: Schema = {"type": "string", "format": "binary"} if with_body else {}
    return {f.content_type: body for f in FORMATS.values()}


def file_replies(with_body: bool) -> dict[int, Reply]:
    audio = audio_content(with_body)
    return {
        200: Reply("The whole file", audio, {**FILE_HEADERS, **LENGTH}),
        206: Reply("The requested range", audio, {**FILE_HEADERS, **LENGTH, "Content-Range": CONTENT_RANGE}),
        304: Reply("If-None-Match matched the ETag", headers=FILE_HEADERS),
    }


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One byte range as [start, end); None means "send everything" (absent or unsupported)."""
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # multiple or malformed ranges: RFC 9110 lets us ignore the header
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable("empty suffix range", headers=unsatisfiable)
        return max(0, size - length), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"range outside 0-{size - 1}", headers=unsatisfiable)
    return start, end


class AudioHandler(BaseHandler):
    route = "/audio"

    async def prepare(self) -> None:
        super().prepare()
        self.require_api_key()
        await self.limit(REQUESTS)

    @operation(
        operation_id="getAudio",
        path=PATH_PARAMETERS,
        headers=CONDITIONS,
        replies=file_replies(with_body=True),
        errors=(401, 404, 416, 429),
    )
    async def get(self, key: str, ext: str) -> None:
        """Stored audio in the format its extension names, with Range and ETag support."""
        await self._send(key, ext, include_body=True)

    @operation(
        operation_id="headAudio",
        path=PATH_PARAMETERS,
        headers=CONDITIONS,
        replies=file_replies(with_body=False),
        errors=(401, 404, 416, 429),
    )
    async def head(self, key: str, ext: str) -> None:
        """Headers only, as for GET."""
        await self._send(key, ext, include_body=False)

    async def _send(self, key: str, ext: str, include_body: bool) -> None:
        audio_format = BY_EXTENSION.get(ext)
        if audio_format is None:
            raise NotFound("no such audio")
        rendition = Rendition(audio_format)
        audio = await self.services.renditions.stored(key, rendition)
        self.cache_tier = audio.tier
        data = audio.data
        etag = f'"{key[:32]}-{ext}-{self.services.cache.checksum(key, data, rendition.suffix):08x}"'
        self.set_header("Content-Type", audio_format.content_type)
        self.set_header("ETag", etag)
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Cache-Control", f"public, max-age={self.services.settings.storage.ttl_s}, immutable")
        self.set_header("X-Cache", audio.tier)
        if etag in (self.request.headers.get("If-None-Match") or ""):
            self.set_status(304)
            self.finish()
            return
        size = len(data)
        span = None
        range_header = self.request.headers.get("Range")
        if range_header and self.request.headers.get("If-Range", etag) == etag:
            span = parse_range(range_header, size)
        start, end = span or (0, size)
        if span is not None:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.set_header("Content-Length", str(end - start))
        if include_body:
            if span is None and audio.tier == L1:
                self.remember_answer(self.services.renditions.entries(key, rendition), entry_body=data)
            self.write(data[start:end])
        self.finish()
