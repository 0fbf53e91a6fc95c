"""`/audio/{hash}.vtt` and `.srt`: captions from the word timings stored with the audio."""

from __future__ import annotations

from typing import ClassVar, Final

from server.audio.captions import to_srt, to_vtt
from server.errors import NotFound
from server.handlers.audio import HASH_PARAMETER
from server.handlers.base import BaseHandler
from server.openapi import RATE_LIMIT_HEADERS, Reply, operation
from server.ratelimit import REQUESTS

VTT: Final = "text/vtt; charset=utf-8"
SRT: Final = "application/x-subrip; charset=utf-8"


def captions_replies(content_type: str) -> dict[int, Reply]:
    return {
        200: Reply("Captions, cues of a few words", {content_type: {"type": "string"}}, RATE_LIMIT_HEADERS)
    }


class _CaptionsHandler(BaseHandler):
    content_type: ClassVar[str]

    async def prepare(self) -> None:
        super().prepare()
        self.require_api_key()
        await self.limit(REQUESTS)

    def render_captions(self, words: list[dict]) -> str:
        raise NotImplementedError

    async def _send(self, key: str) -> None:
        words = await self.services.speech.words(key)
        if words is None:
            raise NotFound("no captions for this audio (unknown, expired, or a voice without word timings)")
        self.set_header("Content-Type", self.content_type)
        self.set_header("Cache-Control", f"public, max-age={self.services.settings.storage.ttl_s}, immutable")
        self.finish(self.render_captions(words).encode("utf-8"))


class VttHandler(_CaptionsHandler):
    route = "/audio"
    content_type = VTT

    def render_captions(self, words: list[dict]) -> str:
        return to_vtt(words)

    @operation(
        operation_id="getCaptionsVtt",
        path=HASH_PARAMETER,
        replies=captions_replies(VTT),
        errors=(401, 404, 429),
    )
    async def get(self, key: str) -> None:
        """WebVTT captions of stored audio, from its word timings."""
        await self._send(key)


class SrtHandler(_CaptionsHandler):
    route = "/audio"
    content_type = SRT

    def render_captions(self, words: list[dict]) -> str:
        return to_srt(words)

    @operation(
        operation_id="getCaptionsSrt",
        path=HASH_PARAMETER,
        replies=captions_replies(SRT),
        errors=(401, 404, 429),
    )
    async def get(self, key: str) -> None:
        """SubRip captions of stored audio, from its word timings."""
        await self._send(key)
