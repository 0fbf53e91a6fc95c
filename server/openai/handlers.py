"""The /v1 handlers: OpenAI's speech endpoint and discovery routes, on the same services as /tts.

`POST /v1/audio/speech` is translated once into our `SpeechRequest` and a rendition, then runs
exactly like `/tts/stream` (same cache keys and tiers, limits, metrics, request ids, cancellation
on disconnect): the body is the encoded file, sent chunk by chunk while synthesis runs, or with
`stream_format: sse` the same bytes as base64 `speech.audio.delta` events. Every error on /v1 is
written in OpenAI's shape by `OpenAIErrors.error_body`, the one place that maps our errors.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from pydantic import BaseModel

from server.audio.formats import FORMATS, PCM, Rendition
from server.errors import NotFound, TTSError
from server.handlers.audio import audio_content
from server.handlers.base import BaseHandler
from server.handlers.stream import STREAM_HEADERS, StreamingHandler
from server.openai.schemas import (
    AudioModel,
    AudioModels,
    AudioVoice,
    AudioVoices,
    ModelList,
    ModelObject,
    SpeechBody,
    parse_speech_body,
)
from server.openai.voices import MODELS, resolve_voice
from server.openapi import Reply, operation
from server.renditions import EncodedStream
from server.request import SpeechRequest, parse_speech_request
from server.schemas import OpenAIError, OpenAIErrorDetail, openai_error

PCM_RATE: Final = 24000  # OpenAI's `pcm` is 24 kHz whatever the voice's rate
OWNER: Final = "tts-server"
SSE: Final = "text/event-stream"
SPEECH_ERRORS: Final = (400, 401, 413, 429, 503)
SPOKEN: Final = {
    200: Reply(
        "The audio in response_format, streamed; or with stream_format sse, its base64 events",
        {**audio_content(), SSE: {"type": "string"}},
        STREAM_HEADERS,
    )
}


def listed(description: str, model: type[BaseModel]) -> dict[int, Reply]:
    return {200: Reply(description, {"application/json": model})}


class OpenAIErrors(BaseHandler):
    """Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, same statuses."""

    def error_body(self, error: TTSError) -> BaseModel:
        body = openai_error(error)
        if body.error.param == "text":  # the shared services name the native field; OpenAI's is `input`
            detail = body.error.model_dump()
            detail.update(param="input", message=body.error.message.replace("text", "input", 1))
            body = OpenAIError(error=OpenAIErrorDetail(**detail))
        return body


class OpenAISpeechHandler(OpenAIErrors, StreamingHandler):
    route = "/v1/audio/speech"

    @operation(
        operation_id="openaiSpeech",
        body=SpeechBody,
        replies=SPOKEN,
        errors=SPEECH_ERRORS,
        error_model=OpenAIError,
        tags=("openai",),
    )
    async def post(self) -> None:
        """Speak `input` in `response_format`, streamed as it is synthesized (or as SSE events)."""
        body = parse_speech_body(self.json_fields())
        self._sse = body.stream_format == "sse"
        self._word_events = self._sse and body.timestamps == "word"
        self._words_sent = 0
        request = self._speech_request(body)
        fmt = FORMATS[body.response_format]
        rendition = Rendition(PCM, PCM_RATE) if fmt is PCM else Rendition(fmt)
        with self.stream_slot():
            stream = await self.services.renditions.stream(request, rendition, self.client_id)
            if self._word_events:
                await stream.load_words()
            await self.send_stream(stream)

    def _speech_request(self, body: SpeechBody) -> SpeechRequest:
        settings = self.services.settings
        catalog = self.services.catalog
        voice = resolve_voice(
            body.model,
            body.voice_id,
            voices=[info.id for info in catalog.infos()],
            aliases=settings.openai.voices,
            default=catalog.default_voice,
        )
        limit = min(settings.openai.max_input_chars, settings.synthesis.max_text_chars)
        fields: dict[str, object] = {"text": body.input, "voice": voice, "speed": body.speed}
        if body.text_format is not None:
            fields["text_format"] = body.text_format
        request = parse_speech_request(
            fields,
            default_voice=catalog.default_voice,
            max_chars=limit,
            default_format=settings.text.openai_format,
        )
        self.voice, self.text_chars = request.voice, len(request.text)
        return request

    def frame(self, chunk: bytes) -> bytes:
        if not self._sse:
            return chunk
        audio = _event({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode("ascii")})
        return self._new_words() + audio

    def _new_words(self) -> bytes:
        """Our extension (timestamps: word): the words known so far, before the audio they describe."""
        if not self._word_events:
            return b""
        words = self._stream.words()
        if len(words) <= self._words_sent:
            return b""
        fresh, self._words_sent = words[self._words_sent :], len(words)
        return _event({"type": "speech.words", "words": fresh})

    def trailer(self, stream: EncodedStream) -> bytes:
        if not self._sse:
            return b""
        # Piper has no tokens: usage counts the input's characters, and no output tokens.
        chars = self.text_chars or 0
        usage = {"input_tokens": chars, "output_tokens": 0, "total_tokens": chars}
        return self._new_words() + _event({"type": "speech.audio.done", "usage": usage})

    def write_stream_headers(self, stream: EncodedStream) -> None:
        super().write_stream_headers(stream)
        if self._sse:
            self.set_header("Content-Type", SSE)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class ModelsHandler(OpenAIErrors):
    route = "/v1/models"

    @operation(
        operation_id="openaiModels",
        replies=listed("OpenAI's model list", ModelList),
        error_model=OpenAIError,
        tags=("openai",),
    )
    def get(self) -> None:
        """OpenAI's model list: the TTS model names and every voice id (a voice id as model picks it)."""
        created = int(self.services.lifecycle.started_at)
        ids = [*MODELS, *(info.id for info in self.services.catalog.infos())]
        models = ModelList(data=[ModelObject(id=i, created=created, owned_by=OWNER) for i in ids])
        self.write_json(models.model_dump())


class AudioModelsHandler(OpenAIErrors):
    route = "/v1/audio/models"

    @operation(
        operation_id="openaiAudioModels",
        replies=listed("The speech models", AudioModels),
        error_model=OpenAIError,
        tags=("openai",),
    )
    def get(self) -> None:
        """The speech models, in the shape Open WebUI reads for its model menu."""
        self.write_json(AudioModels(models=[AudioModel(id=model) for model in MODELS]).model_dump())


class AudioVoicesHandler(OpenAIErrors):
    route = "/v1/audio/voices"

    @operation(
        operation_id="openaiAudioVoices",
        replies=listed("The voices", AudioVoices),
        error_model=OpenAIError,
        tags=("openai",),
    )
    def get(self) -> None:
        """Our voices, in the shape Open WebUI reads for its voice menu."""
        voices = [AudioVoice(id=i.id, name=i.id, language=i.language) for i in self.services.catalog.infos()]
        self.write_json(AudioVoices(voices=voices).model_dump())


class NotFoundHandler(OpenAIErrors):
    """Any other /v1 path: a 404 in OpenAI's shape."""

    def prepare(self) -> None:
        super().prepare()
        raise NotFound("no such route")


ROUTES: Final = [
    (r"/v1/audio/speech", OpenAISpeechHandler),
    (r"/v1/models", ModelsHandler),
    (r"/v1/audio/models", AudioModelsHandler),
    (r"/v1/audio/voices", AudioVoicesHandler),
    (r"/v1/.*", NotFoundHandler),
]
