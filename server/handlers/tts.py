"""`/tts`: synthesize (or find) the audio and answer with a URL to it in the asked format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.audio.formats import AudioFormat, Rendition
from server.handlers.base import BaseHandler
from server.ratelimit import REQUESTS
from server.request import SpeechRequest, parse_format, parse_speech_request


class SpeechHandler(BaseHandler):
    """Shared parsing for the routes that take text, speed and voice."""

    async def prepare(self) -> None:
        super().prepare()
        self.require_api_key()
        await self.limit(REQUESTS)

    def audio_format(self, fields: dict[str, Any], default: str) -> AudioFormat:
        """Take `format` out of the fields (it changes the encoding, never the audio key)."""
        return parse_format(fields.pop("format", None), default)

    def speech_request(self, fields: Mapping[str, Any]) -> SpeechRequest:
        synthesis = self.services.settings.synthesis
        request = parse_speech_request(
            fields, default_voice=synthesis.default_voice, max_chars=synthesis.max_text_chars
        )
        self.voice, self.text_chars = request.voice, len(request.text)
        return request

    def base_url(self) -> str:
        public = self.services.settings.server.public_url
        if public:
            return public.rstrip("/")
        return f"{self.request.protocol}://{self.request.host}"


class TTSHandler(SpeechHandler):
    route = "/tts"

    async def get(self) -> None:
        """Synthesize from query arguments."""
        await self._respond(self.query_fields())

    async def post(self) -> None:
        """Synthesize from a JSON body with the same fields."""
        await self._respond(dict(self.json_fields()))

    async def _respond(self, fields: dict[str, Any]) -> None:
        audio_format = self.audio_format(fields, "wav")
        request = self.speech_request(fields)
        audio = await self.services.renditions.file(request, Rendition(audio_format), self.client_id)
        self.cache_tier = audio.tier
        self.write_json(
            {
                "hash": audio.key,
                "text": request.text,
                "speed": request.speed,
                "voice": request.voice,
                "audio_url": f"{self.base_url()}/audio/{audio.key}.{audio_format.ext}",
                "duration_s": round(audio.duration_s or 0.0, 3),
                "sample_rate": audio.sample_rate,
                "cache": audio.tier,
            }
        )
