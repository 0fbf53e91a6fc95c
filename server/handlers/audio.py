"""`/audio/{hash}.{ext}`: stored audio in any format from L1, L2 or disk, with Range and ETag support.

A format that is not stored yet is encoded once from the key's WAV (and stored beside it).
"""

from __future__ import annotations

import re
import zlib
from typing import Final

from server.audio.formats import BY_EXTENSION, Rendition
from server.errors import NotFound, RangeNotSatisfiable
from server.handlers.base import BaseHandler
from server.ratelimit import REQUESTS

_RANGE: Final = re.compile(r"bytes=(\d*)-(\d*)")


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

    async def get(self, key: str, ext: str) -> None:
        """The audio for a hash that /tts returned, in the format its extension names."""
        await self._send(key, ext, include_body=True)

    async def head(self, key: str, ext: str) -> None:
        """Headers only, as for GET."""
        await self._send(key, ext, include_body=False)

    async def _send(self, key: str, ext: str, include_body: bool) -> None:
        audio_format = BY_EXTENSION.get(ext)
        if audio_format is None:
            raise NotFound("no such audio")
        audio = await self.services.renditions.stored(key, Rendition(audio_format))
        self.cache_tier = audio.tier
        data = audio.data
        etag = f'"{key[:32]}-{ext}-{zlib.crc32(data):08x}"'
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
            self.write(data[start:end])
        self.finish()
