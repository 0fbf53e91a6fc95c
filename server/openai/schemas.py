"""The OpenAI dialect's request body, as pydantic models, and its validation errors as ours.

Field names, defaults and ranges follow OpenAI's published `POST /v1/audio/speech`. Unknown fields
are ignored, as clients written against OpenAI's API send fields of newer versions. A validation
error becomes an `InvalidRequest` naming the field (`param`), which the /v1 handlers answer in
OpenAI's error shape (`server.schemas.OpenAIError`). The OpenAPI document is generated from these
models, declared on each handler method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import InvalidRequest
from server.request import MAX_SPEED, MIN_SPEED

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(BaseModel):
    """A voice given as an object, as OpenAI's custom voices are: `{"id": "..."}`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)


class SpeechBody(BaseModel):
    """The JSON body of `POST /v1/audio/speech`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(min_length=1)
    input: str = Field(min_length=1)  # the configured maximum is checked after normalization
    voice: str | VoiceRef
    instructions: str | None = None  # accepted and ignored: Piper voices have no style control
    response_format: ResponseFormat = "mp3"
    speed: float = Field(default=1.0, ge=MIN_SPEED, le=MAX_SPEED)
    stream_format: Literal["audio", "sse"] = "audio"
    # Our extension: how `input` is read (plain, markdown, ssml); None: `text.openai_format`.
    text_format: Literal["plain", "markdown", "ssml"] | None = None
    # Our extension: with stream_format sse, "word" adds speech.words events before their audio.
    timestamps: Literal["none", "word"] = "none"

    @property
    def voice_id(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


def parse_speech_body(raw: Mapping[str, Any]) -> SpeechBody:
    """Validate a JSON object; the first problem becomes a 400 that names its field."""
    try:
        return SpeechBody.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        field = param.split(".")[0] if param else "body"
        raise InvalidRequest(f"{field}: {first['msg']}", param=field if param else None) from None


class ModelObject(BaseModel):
    """One entry of OpenAI's model list."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """`GET /v1/models`, OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


class AudioModel(BaseModel):
    id: str


class AudioModels(BaseModel):
    """`GET /v1/audio/models`, the shape Open WebUI reads."""

    models: list[AudioModel]


class AudioVoice(BaseModel):
    id: str
    name: str
    language: str


class AudioVoices(BaseModel):
    """`GET /v1/audio/voices`, the shape Open WebUI reads."""

    voices: list[AudioVoice]
