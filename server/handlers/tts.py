"""`/tts`: synthesize (or find) the audio and answer with a URL to its WAV."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.clients import request_origin
from server.errors import InvalidRequest
from server.handlers.base import BaseHandler
from server.ratelimit import REQUESTS
from server.request import SpeechRequest, parse_speech_request


class SpeechHandler(BaseHandler):
    """Shared parsing for the routes that take text, speed and voice."""

    async def prepare(self) -> None:
        super().prepare()
        await self.limit(REQUESTS)

    def speech_request(self, fields: Mapping[str, Any]) -> SpeechRequest:
        synthesis = self.services.settings.synthesis
        request = parse_speech_request(
            fields, default_voice=synthesis.default_voice, max_chars=synthesis.max_text_chars
        )
        self.voice, self.text_chars = request.voice, len(request.text)
        return request

    def base_url(self) -> str:
        """public_url, else the request's own origin when its host is one we serve."""
        public = self.services.settings.server.public_url
        if public:
            return public.rstrip("/")
        headers = self.request.headers
        origin = request_origin(
            protocol=self.request.protocol,
            host=self.request.host,
            peer=self.request.remote_ip or "",
            forwarded_proto=headers.get("X-Forwarded-Proto"),
            forwarded_host=headers.get("X-Forwarded-Host"),
            trusted=self.services.trusted_proxies,
            allowed=self.services.allowed_hosts,
        )
        if origin is None:
            raise InvalidRequest("unknown Host: set server.public_url or add it to server.allowed_hosts")
        return origin


class TTSHandler(SpeechHandler):
    route = "/tts"

    async def get(self) -> None:
        """Synthesize from query arguments."""
        await self._respond(self.speech_request(self.query_fields()))

    async def post(self) -> None:
        """Synthesize from a JSON body with the same fields."""
        await self._respond(self.speech_request(self.json_fields()))

    async def _respond(self, request: SpeechRequest) -> None:
        base = self.base_url()  # before any work: a request we cannot answer costs nothing
        audio = await self.services.speech.synthesize(request, self.client_id)
        self.cache_tier = audio.tier
        path = f"/audio/{audio.key}.wav"
        audio_url, extra = f"{base}{path}", {}
        direct = await self.services.cache.direct_url(audio.key)
        if direct is not None:  # the bytes need not pass through our workers
            audio_url, expires = direct
            if expires is not None:
                extra["expires_at"] = expires.isoformat().replace("+00:00", "Z")
        self.write_json(
            {
                "hash": audio.key,
                "text": request.text,
                "speed": request.speed,
                "voice": request.voice,
                "audio_url": audio_url,
                "audio_path": path,
                "duration_s": round(audio.duration_s, 3),
                "sample_rate": audio.sample_rate,
                "cache": audio.tier,
                **extra,
            }
        )
