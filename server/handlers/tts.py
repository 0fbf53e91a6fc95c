"""`/tts`: synthesize (or find) the audio and answer with a URL to its file in the asked format."""

from __future__ import annotations

from typing import Final

from server.audio.formats import FORMATS, Rendition
from server.cache.tiers import L1, WORDS_SUFFIX
from server.clients import request_origin
from server.errors import InvalidRequest
from server.handlers.base import BaseHandler
from server.openapi import RATE_LIMIT_HEADERS, Reply, operation
from server.ratelimit import REQUESTS
from server.request import SpeechRequest, speech_request
from server.schemas import SpeechFields, Synthesis, TTSFields, WordTiming, validate

SPEECH_ERRORS: Final = (400, 401, 413, 429, 503)
STORED: Final = {
    200: Reply("Stored; audio_url serves it", {"application/json": Synthesis}, RATE_LIMIT_HEADERS)
}


class SpeechHandler(BaseHandler):
    """Shared parsing for the routes that take text, speed and voice."""

    async def prepare(self) -> None:
        super().prepare()
        self.require_api_key()
        await self.limit(REQUESTS)

    default_format_key = "tts_format"  # the `text` setting naming this route's default text_format

    def speech_request(self, fields: SpeechFields) -> SpeechRequest:
        settings = self.services.settings
        synthesis = settings.synthesis
        request = speech_request(
            fields,
            default_voice=synthesis.default_voice,
            max_chars=synthesis.max_text_chars,
            default_format=getattr(settings.text, self.default_format_key),
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

    @operation(operation_id="ttsGet", query=TTSFields, replies=STORED, errors=SPEECH_ERRORS)
    async def get(self) -> None:
        """Synthesize (or find) the audio in the asked format; answers with its URL."""
        await self._respond(validate(TTSFields, self.query_fields()))

    @operation(operation_id="ttsPost", body=TTSFields, replies=STORED, errors=SPEECH_ERRORS)
    async def post(self) -> None:
        """As GET, with the fields in a JSON body."""
        await self._respond(validate(TTSFields, self.json_fields()))

    async def _respond(self, fields: TTSFields) -> None:
        rendition = Rendition(FORMATS[fields.format])
        request = self.speech_request(fields)
        base = self.base_url()  # before any work: a request we cannot answer costs nothing
        audio = await self.services.renditions.file(request, rendition, self.client_id)
        self.cache_tier = audio.tier
        path = f"/audio/{audio.key}.{rendition.format.ext}"
        audio_url, expires_at = f"{base}{path}", None
        direct = await self.services.cache.direct_url(audio.key, rendition.suffix)
        if direct is not None:  # the bytes need not pass through our workers
            audio_url, expires = direct
            if expires is not None:
                expires_at = expires.isoformat().replace("+00:00", "Z")
        stored_words = await self.services.speech.words(audio.key) if fields.timestamps == "word" else None
        synthesis = Synthesis(
            hash=audio.key,
            text=request.text,
            speed=request.speed,
            voice=request.voice,
            audio_url=audio_url,
            audio_path=path,
            expires_at=expires_at,
            duration_s=round(audio.duration_s or 0.0, 3),
            sample_rate=audio.sample_rate,
            cache=audio.tier,  # type: ignore[arg-type]
            words=None
            if fields.timestamps != "word"
            else [WordTiming(**word) for word in stored_words or []],
        )
        if audio.tier == L1 and direct is None:
            # An identical request gets these bytes again while L1 holds what they were made from
            # (not a direct URL, which expires; not word timings that are not stored yet).
            entries = self.services.renditions.entries(audio.key, rendition)
            if fields.timestamps != "word":
                self.remember_answer(entries)
            elif stored_words is not None:
                self.remember_answer([*entries, (audio.key, WORDS_SUFFIX)])
        self.write_model(synthesis)
