"""Pydantic models of every request and response body: validation here, the OpenAPI document from them.

Handlers validate raw fields (query arguments or a JSON object) with `validate(Model, fields)`, which
turns pydantic's findings into our `InvalidRequest` naming the field (`param`), so each front door
maps one error to its own shape: `{"error": {"code", "message"}}` natively, OpenAI's
`{"error": {"message", "type", "param", "code"}}` on `/v1`. Responses are written from models too,
so the document `server/openapi.py` generates from them is what clients really get.

Two schemas depend on the running server, the text's length limit and the loaded voices; fields
refer to them as `Text` and `Voice` and `openapi.py` fills them in from the settings and catalog.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import ErrorDetails, PydanticCustomError

from server.errors import InvalidRequest, TTSError
from server.text.spans import TextFormat

# The original API's named speeds, as length_scale (larger is slower).
SPEED_PRESETS: Final = {
    "very_slow": 1.5,
    "slow": 1.2,
    "normal": 1.0,
    "fast": 0.6,
    "very_fast": 0.4,
}
MIN_SPEED: Final = 0.25
MAX_SPEED: Final = 4.0
MIN_VOLUME: Final = 0.1
MAX_VOLUME: Final = 4.0
HASH_PATTERN: Final = "^[0-9a-f]{64}$"
# Codes the base handler gives to errors Tornado raises itself (unknown method, bad request).
FRAMEWORK_CODES: Final = ("bad_request", "internal_error", "method_not_allowed", "not_found")


COMPONENT: Final = "x-component"


def component(name: str) -> dict[str, str]:
    """A reference to a schema pydantic does not write (see `server_schemas`); the document resolves it."""
    return {COMPONENT: name}


class AudioFormat(StrEnum):
    """Audio container or raw PCM (s16le mono at the voice's rate)."""

    WAV = "wav"
    PCM = "pcm"
    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"
    FLAC = "flac"


def speed_label(raw: object) -> str | float | None:
    """A preset name (lower-cased) or a rate in [0.25, 4]; None for "normal" by default."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str) and raw.strip().lower() in SPEED_PRESETS:
        return raw.strip().lower()
    if isinstance(raw, bool):
        raise ValueError(f"speed must be a number or one of {', '.join(SPEED_PRESETS)}")
    try:
        rate = float(raw) if isinstance(raw, int | float | str) else math.nan
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate):
        raise ValueError(
            f"speed must be a number from {MIN_SPEED} to {MAX_SPEED} or one of {', '.join(SPEED_PRESETS)}"
        )
    if not MIN_SPEED <= rate <= MAX_SPEED:
        raise ValueError(f"speed must be from {MIN_SPEED} to {MAX_SPEED}, got {rate:g}")
    return rate


def _name(value: object) -> object:
    """A voice or speaker may be given as a number (speaker 3); never a boolean or a list."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return str(value)


def format_field(default: AudioFormat) -> Any:
    """The `format` field: empty (or null) means the route's default."""
    return Annotated[AudioFormat, BeforeValidator(lambda value: default if value in ("", None) else value)]


SpeedRate = Annotated[
    float,
    Field(ge=MIN_SPEED, le=MAX_SPEED, description="Speaking rate: 2 is twice as fast, 0.5 half as fast"),
]
Speed = Annotated[
    str | float | None,
    BeforeValidator(speed_label),
    WithJsonSchema({"anyOf": [component("SpeedPreset"), component("SpeedRate"), {"type": "null"}]}),
]
Text = Annotated[str, WithJsonSchema(component("Text"))]
Voice = Annotated[
    str | None, BeforeValidator(_name), WithJsonSchema({"anyOf": [component("Voice"), {"type": "null"}]})
]
Speaker = Annotated[
    str | None,
    BeforeValidator(_name),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "Speaker name or number, for multi-speaker voices",
        }
    ),
]
Hash = Annotated[str, Field(pattern=HASH_PATTERN, description="The audio's hash, as /tts returned it")]
TextFormatField = Annotated[
    TextFormat | None,
    BeforeValidator(lambda value: None if value == "" else value),
    Field(description="How text is read: plain, markdown or ssml; empty: the route's configured default"),
]
Volume = Annotated[
    Annotated[float, Field(ge=MIN_VOLUME, le=MAX_VOLUME)] | None,
    BeforeValidator(lambda value: None if value == "" else value),
    Field(
        description="Times the voice's loudness-matched level (every voice is brought to one loudness); "
        "peaks are limited. Default 1",
    ),
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- requests --------------------------------------------------------------------------------------


class SpeechFields(Model):
    """What to say and how: the query of GET /tts and /tts/stream, the JSON body of their POSTs."""

    text: Text
    speed: Speed = None
    voice: Voice = None
    speaker: Speaker = None
    text_format: TextFormatField = None
    volume: Volume = None


class TTSFields(SpeechFields):
    """The fields of /tts: the stored file's format (its audio_url's extension)."""

    format: format_field(AudioFormat.WAV) = AudioFormat.WAV  # type: ignore[valid-type]
    timestamps: Annotated[
        Literal["none", "word"],
        BeforeValidator(lambda value: "none" if value in ("", None) else value),
        Field(description="word: the answer lists each word with its times in the audio"),
    ] = "none"


class StreamFields(SpeechFields):
    """The fields of /tts/stream: the streamed format, raw PCM unless asked otherwise."""

    format: format_field(AudioFormat.PCM) = AudioFormat.PCM  # type: ignore[valid-type]
    events: Annotated[
        Literal["none", "sse"],
        BeforeValidator(lambda value: "none" if value in ("", None) else value),
        Field(
            description="sse: server-sent events, audio events (base64, the asked format) with words "
            "events before the audio they describe, then done (also with Accept: text/event-stream)"
        ),
    ] = "none"


class PurgeOne(Model):
    hash: Hash


class PurgeAll(Model):
    all: Literal[True]


PurgeBody = PurgeOne | PurgeAll


# -- responses -------------------------------------------------------------------------------------


class Synthesis(Model):
    """The stored audio of /tts and where to fetch it."""

    hash: Hash
    text: str = Field(description="The normalized text that was spoken")
    speed: str | SpeedRate = Field(description="As the client named it: a preset, or the rate")
    voice: str
    audio_url: str = Field(description="Absolute URL of the stored audio: here, or in the object store")
    audio_path: str = Field(description="The same audio on this server, relative")
    expires_at: str | SkipJsonSchema[None] = Field(
        None,
        description="When a presigned audio_url stops working (only with s3.presign_s), RFC 3339 UTC",
        exclude_if=lambda value: value is None,
    )
    duration_s: float = Field(ge=0)
    sample_rate: int = Field(ge=1)
    cache: Literal["l1", "l2", "disk", "s3", "miss"]
    words: list[WordTiming] | SkipJsonSchema[None] = Field(
        None,
        description="With timestamps=word: every word in order (empty for a voice whose graph does "
        "not split, which has no frames per phoneme)",
        exclude_if=lambda value: value is None,
    )


class WordTiming(Model):
    """One written word: its times in the audio and where it is in the text as submitted."""

    word: str = Field(description="The word as written (markup is never a word)")
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    char_start: int = Field(ge=0, description="Offset of its first character (Unicode code points)")
    char_end: int = Field(ge=0, description="Offset after its last character (end exclusive)")


class VoiceInfo(Model):
    id: str
    language: str
    sample_rate: int = Field(ge=1)
    num_speakers: int = Field(ge=1)
    speakers: list[str]


class Voices(Model):
    """The voice catalog."""

    default: str
    voices: list[VoiceInfo]


class Health(Model):
    status: Literal["ok"]


Count = Annotated[int, Field(ge=0)]


class QueueReport(Model):
    """The job queue as this worker last saw it (refreshed every jobs.sweep_interval_s)."""

    state: Literal["ok", "unavailable", "disabled", "starting"]
    queued: Count | SkipJsonSchema[None] = Field(None, exclude_if=lambda value: value is None)
    active: Count | SkipJsonSchema[None] = Field(None, exclude_if=lambda value: value is None)
    workers: Count | SkipJsonSchema[None] = Field(
        None, description="Worker processes serving it", exclude_if=lambda value: value is None
    )


class Readiness(Model):
    status: Literal["ready", "loading", "unready", "draining"]
    voices: list[str]
    providers: dict[str, str] = Field(description="The execution provider each voice's session got")
    redis: Literal["ok", "degraded", "disabled"]
    store: Literal["ok", "degraded", "disabled"] = Field(description="The object store (storage.backend s3)")
    degraded: list[Literal["redis", "store"]] | SkipJsonSchema[None] = Field(
        None,
        description="Shared tiers that are out: serving, but new URLs may be this replica's only",
        exclude_if=lambda value: value is None,
    )
    problem: str | SkipJsonSchema[None] = Field(
        None, description="Why the server is unready", exclude_if=lambda value: value is None
    )
    jobs: QueueReport | SkipJsonSchema[None] = Field(
        None, description="The job queue (/jobs)", exclude_if=lambda value: value is None
    )


class StorageStats(Model):
    disk: dict[str, Annotated[int, Field(ge=0)]]
    l1_bytes: int = Field(ge=0)


class SchedulerCounters(Model):
    admitted: int = Field(ge=0, description="Syntheses admitted (running or waiting)")
    queued: int = Field(ge=0, description="Jobs waiting for an inference slot")
    running: int = Field(ge=0, description="Inference calls running now")


class RedisRuntime(Model):
    state: str = Field(description="ok, degraded or off")
    pool: dict[str, Annotated[int, Field(ge=0)]] | None = Field(
        description="Pooled connections in use and idle; null where the client keeps no pool"
    )


class Runtime(Model):
    """One worker's moving parts, to spot leaks (tasks, slots, connections) from outside."""

    pid: int
    rss_bytes: int = Field(ge=0)
    asyncio_tasks: int = Field(ge=0)
    in_flight_requests: int = Field(ge=0)
    syntheses: int = Field(ge=0)
    scheduler: SchedulerCounters
    open_streams: int = Field(ge=0)
    redis: RedisRuntime
    l1_bytes: int = Field(ge=0)
    answers: int | None = Field(
        ge=0, description="Answers of L1 hits kept to be sent again; null where none are kept"
    )


class EffectiveConfig(Model):
    """The settings as the server runs them (every section of config.yaml), secrets masked."""

    model_config = ConfigDict(extra="allow", frozen=True)
    admin_api_keys: str = Field(description="How many admin keys are configured, never the keys")
    api_keys: str = Field(description="How many public API keys are configured, never the keys")


class Cleanup(Model):
    removed: int = Field(ge=0)


class Deleted(Model):
    deleted: Hash


class Purged(Model):
    purged: Hash


class PurgedAll(Model):
    purged: Literal["all"]
    removed: dict[str, Annotated[int, Field(ge=0)]]


def error_codes() -> list[str]:
    """Every code a client may see: each TTSError subclass's, and the framework's."""
    found: set[str] = set(FRAMEWORK_CODES)
    pending: list[type[TTSError]] = [TTSError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(found)


def _codes_enum(schema: dict[str, Any]) -> None:
    # Computed when the document is made, so errors added anywhere later are listed too.
    schema["enum"] = error_codes()


class ErrorDetail(Model):
    code: str = Field(json_schema_extra=_codes_enum)
    message: str = Field(description="Safe to show; never internals")


class Error(Model):
    """Every native error answer."""

    error: ErrorDetail


class OpenAIErrorDetail(Model):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(Model):
    """Every /v1 error answer, in the shape the OpenAI SDKs parse."""

    error: OpenAIErrorDetail


def server_schemas(max_text_chars: int, voices: list[str]) -> dict[str, dict[str, Any]]:
    """The schemas fields refer to by name whose content depends on the running server."""
    text = TypeAdapter(
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=max_text_chars,
                description=(
                    f"What to say. At most {max_text_chars} characters after normalization (NFC, "
                    "control and format characters removed, whitespace collapsed); longer gets 413. "
                    "Text with nothing to speak (empty after normalization, only punctuation) gets 400."
                ),
            ),
        ]
    )
    voice: dict[str, Any] = {"type": "string", "description": "A voice id from /voices; empty: the default"}
    if voices:
        voice["enum"] = [*voices, ""]
    return {
        "Text": text.json_schema(),
        "Voice": voice,
        "SpeedPreset": {
            "type": "string",
            "enum": [*SPEED_PRESETS, ""],
            "description": "A named speed (case-insensitive); empty: normal",
        },
        "SpeedRate": TypeAdapter(SpeedRate).json_schema(),
        "Speed": {"anyOf": [component("SpeedPreset"), component("SpeedRate")]},
    }


def native_error(error: TTSError) -> Error:
    """Our error as the native routes write it."""
    return Error(error=ErrorDetail(code=error.code, message=error.message))


def openai_error(error: TTSError) -> OpenAIError:
    """Our error in OpenAI's shape: its `type` from the status, our code and field as `code` and `param`."""
    if error.status == 401:
        kind = "authentication_error"
    elif error.status == 429:
        kind = "rate_limit_error"
    elif error.status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return OpenAIError(
        error=OpenAIErrorDetail(message=error.message, type=kind, param=error.param, code=error.code)
    )


# -- validation ------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _field(error: ErrorDetails) -> str:
    return ".".join(str(part) for part in error["loc"] if not isinstance(part, int)) or "body"


def _message(error: ErrorDetails, field: str) -> str:
    kind = error["type"]
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"unknown field: {field}"
    if kind == "string_type":
        return f"{field} must be a string"
    if kind == "enum":
        return f"{field} must be one of {error.get('ctx', {}).get('expected', '')}".replace("'", "")
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    return f"{field}: {error['msg'][0].lower()}{error['msg'][1:]}"


def request_error(exc: ValidationError) -> InvalidRequest:
    """Pydantic's first finding as our 400, its message and `param` naming the field."""
    error = exc.errors(include_url=False)[0]
    field = _field(error)
    return InvalidRequest(_message(error, field), param=field)


def validate(model: type[M], fields: Mapping[str, Any]) -> M:
    """Raw fields (query arguments or a JSON object) as `model`, or `InvalidRequest`."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise request_error(exc) from None


_PURGE: Final[TypeAdapter[PurgeOne | PurgeAll]] = TypeAdapter(PurgeBody)


def validate_purge(body: Mapping[str, Any]) -> PurgeOne | PurgeAll:
    try:
        return _PURGE.validate_python(body)
    except ValidationError:
        raise InvalidRequest(
            'the body must be {"hash": "<64 hex digits>"} or {"all": true}', param="hash"
        ) from None


def dump(model: BaseModel) -> dict[str, Any]:
    """A response model as the JSON object written."""
    return model.model_dump(mode="json")
