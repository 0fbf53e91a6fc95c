"""The OpenAPI 3.1 description of the public HTTP API, built from the running settings.

`openapi_document(settings, voices)` returns the document `GET /openapi.json` serves. Limits that
depend on configuration (text length, body size) come from `settings`, and the voice enum from
the voices actually loaded, so the document never promises what this server would refuse. The
test suite checks real responses against it and fuzzes the server with it (schemathesis).
"""

from __future__ import annotations

from typing import Any, Final

from server.errors import TTSError
from server.request import MAX_SPEED, MIN_SPEED, SPEED_PRESETS
from server.settings import Settings

OPENAPI_VERSION: Final = "3.1.0"
HASH_PATTERN: Final = "^[0-9a-f]{64}$"
# Codes the base handler gives to errors Tornado raises itself (unknown method, bad request).
_FRAMEWORK_CODES: Final = ("bad_request", "internal_error", "method_not_allowed", "not_found")

Schema = dict[str, Any]


def _error_codes() -> list[str]:
    found: set[str] = set(_FRAMEWORK_CODES)
    pending: list[type[TTSError]] = [TTSError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(found)


def _ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _integer_header(description: str, required: bool = False) -> Schema:
    return {"description": description, "required": required, "schema": {"type": "integer", "minimum": 0}}


def _string_header(description: str, required: bool = False, **schema: Any) -> Schema:
    return {"description": description, "required": required, "schema": {"type": "string", **schema}}


COMMON_HEADERS: Final = {
    "X-Request-ID": _string_header("The request's id (the client's, when it sent a safe one)", True),
    "X-Content-Type-Options": _string_header("Always nosniff", True, enum=["nosniff"]),
}
RATE_LIMIT_HEADERS: Final = {
    "RateLimit-Limit": _integer_header("Size of the client's bucket (its burst)"),
    "RateLimit-Remaining": _integer_header("Tokens left in the bucket"),
    "RateLimit-Reset": _integer_header("Seconds until the bucket is full again"),
}


def _response(
    description: str,
    media_type: str | None = None,
    schema: Schema | None = None,
    headers: dict[str, Schema] | None = None,
) -> Schema:
    response: Schema = {"description": description, "headers": {**COMMON_HEADERS, **(headers or {})}}
    if media_type is not None:
        response["content"] = {media_type: {"schema": schema or {}}}
    return response


def _error(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    return _response(description, "application/json", _ref("Error"), headers)


def _json(description: str, schema: Schema, headers: dict[str, Schema] | None = None) -> Schema:
    return _response(description, "application/json", schema, headers)


def _errors(*statuses: str) -> dict[str, Schema]:
    return {status: _ref(f"E{status}", "responses") for status in statuses}


def _components(settings: Settings, voices: list[str]) -> Schema:
    retry_after = _integer_header("Seconds to wait before retrying", required=True)
    text = settings.synthesis.max_text_chars
    voice: Schema = {"type": "string", "description": "A voice id from /voices; empty: the default"}
    if voices:
        voice["enum"] = [*voices, ""]
    presets = [*SPEED_PRESETS, ""]
    schemas: dict[str, Schema] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "enum": _error_codes()},
                        "message": {"type": "string", "description": "Safe to show; never internals"},
                    },
                }
            },
        },
        "Text": {
            "type": "string",
            "minLength": 1,
            "maxLength": text,
            "description": (
                f"What to say. At most {text} characters after normalization (NFC, control and "
                "format characters removed, whitespace collapsed); longer gets 413. Text with "
                "nothing to speak (empty after normalization, only punctuation) gets 400."
            ),
        },
        "SpeedPreset": {
            "type": "string",
            "enum": presets,
            "description": "A named speed (case-insensitive); empty: normal",
        },
        "SpeedRate": {
            "type": "number",
            "minimum": MIN_SPEED,
            "maximum": MAX_SPEED,
            "description": "Speaking rate: 2 is twice as fast, 0.5 half as fast",
        },
        "Speed": {"anyOf": [_ref("SpeedPreset"), _ref("SpeedRate")]},
        "Voice": voice,
        "Speaker": {"type": "string", "description": "Speaker name or number, for multi-speaker voices"},
        "SpeechFields": {
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {
                "text": _ref("Text"),
                "speed": {"anyOf": [_ref("SpeedPreset"), _ref("SpeedRate"), {"type": "null"}]},
                "voice": {"anyOf": [_ref("Voice"), {"type": "null"}]},
                "speaker": {"anyOf": [_ref("Speaker"), {"type": "null"}]},
            },
        },
        "Synthesis": {
            "type": "object",
            "required": [
                "hash",
                "text",
                "speed",
                "voice",
                "audio_url",
                "audio_path",
                "duration_s",
                "sample_rate",
                "cache",
            ],
            "additionalProperties": False,
            "properties": {
                "hash": {"type": "string", "pattern": HASH_PATTERN},
                "text": {"type": "string", "description": "The normalized text that was spoken"},
                "speed": {"anyOf": [{"type": "string", "enum": list(SPEED_PRESETS)}, _ref("SpeedRate")]},
                "voice": {"type": "string"},
                "audio_url": {
                    "type": "string",
                    "description": "Absolute URL of the WAV: here, or in the object store",
                },
                "audio_path": {"type": "string", "description": "The same WAV on this server, relative"},
                "expires_at": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When a presigned audio_url stops working (only with s3.presign_s)",
                },
                "duration_s": {"type": "number", "minimum": 0},
                "sample_rate": {"type": "integer", "minimum": 1},
                "cache": {"type": "string", "enum": ["l1", "l2", "disk", "s3", "miss"]},
            },
        },
        "Voices": {
            "type": "object",
            "required": ["default", "voices"],
            "additionalProperties": False,
            "properties": {
                "default": {"type": "string"},
                "voices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "language", "sample_rate", "num_speakers", "speakers"],
                        "additionalProperties": False,
                        "properties": {
                            "id": {"type": "string"},
                            "language": {"type": "string"},
                            "sample_rate": {"type": "integer", "minimum": 1},
                            "num_speakers": {"type": "integer", "minimum": 1},
                            "speakers": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "voices", "providers", "redis", "store"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["ready", "loading", "unready", "draining"]},
                "voices": {"type": "array", "items": {"type": "string"}},
                "providers": {"type": "object", "additionalProperties": {"type": "string"}},
                "redis": {"type": "string", "enum": ["ok", "degraded", "disabled"]},
                "store": {"type": "string", "enum": ["ok", "degraded", "disabled"]},
                "degraded": {"type": "array", "items": {"type": "string", "enum": ["redis", "store"]}},
                "problem": {"type": "string"},
            },
        },
        "Purge": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["hash"],
                    "additionalProperties": False,
                    "properties": {"hash": {"type": "string", "pattern": HASH_PATTERN}},
                },
                {
                    "type": "object",
                    "required": ["all"],
                    "additionalProperties": False,
                    "properties": {"all": {"const": True}},
                },
            ]
        },
    }
    responses = {
        "E400": _error(
            "The request is malformed: a bad field, unknown voice, text with nothing to speak, or "
            "invalid JSON or UTF-8",
            RATE_LIMIT_HEADERS,
        ),
        "E401": _error(
            "Missing or wrong X-API-Key",
            {"WWW-Authenticate": _string_header("How to authenticate", True)},
        ),
        "E404": _error("No such resource", RATE_LIMIT_HEADERS),
        "E405": _error(
            "The path does not take this method (any method its entry does not list)",
            {"Allow": _string_header("The methods it takes", True)},
        ),
        "E413": _error(
            f"Text longer than {text} characters, or a body over {settings.server.max_body_bytes} bytes",
            RATE_LIMIT_HEADERS,
        ),
        "E416": _error(
            "The Range lies outside the file",
            {
                "Content-Range": _string_header("bytes */SIZE", True, pattern=r"^bytes \*/\d+$"),
                **RATE_LIMIT_HEADERS,
            },
        ),
        "E429": _error(
            "The client's bucket is empty, or it has too many streams open",
            {"Retry-After": retry_after, **RATE_LIMIT_HEADERS},
        ),
        "E503": _error(
            "Saturated (too many syntheses in progress), still loading, or storage unavailable",
            {"Retry-After": retry_after, **RATE_LIMIT_HEADERS},
        ),
    }
    parameters = {
        "text": {"name": "text", "in": "query", "required": True, "schema": _ref("Text")},
        "speed": {"name": "speed", "in": "query", "required": False, "schema": _ref("Speed")},
        "voice": {"name": "voice", "in": "query", "required": False, "schema": _ref("Voice")},
        "speaker": {"name": "speaker", "in": "query", "required": False, "schema": _ref("Speaker")},
        "hash": {
            "name": "hash",
            "in": "path",
            "required": True,
            "description": "The hash /tts returned",
            "schema": {"type": "string", "pattern": HASH_PATTERN},
        },
    }
    return {
        "schemas": schemas,
        "responses": responses,
        "parameters": parameters,
        "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
    }


def _speech_parameters() -> list[Schema]:
    return [_ref(name, "parameters") for name in ("text", "speed", "voice", "speaker")]


def _audio_operation(summary: str, with_body: bool) -> Schema:
    wav = {"type": "string", "format": "binary"} if with_body else None
    file_headers = {
        "ETag": _string_header("Strong validator of these bytes", True),
        "Accept-Ranges": _string_header("Single byte ranges are supported", True, enum=["bytes"]),
        "Cache-Control": _string_header("Public and immutable for the storage TTL", True),
        "X-Cache": _string_header("Tier that had it", True, enum=["l1", "l2", "disk", "s3"]),
        **RATE_LIMIT_HEADERS,
    }
    length = {"Content-Length": _integer_header("Bytes in the (partial) body", True)}
    content_range = _string_header("bytes START-END/SIZE", True, pattern=r"^bytes \d+-\d+/\d+$")
    return {
        "summary": summary,
        "operationId": "getAudio" if with_body else "headAudio",
        "parameters": [
            _ref("hash", "parameters"),
            {
                "name": "Range",
                "in": "header",
                "required": False,
                "description": "One byte range, bytes=START-END, bytes=START- or bytes=-SUFFIX",
                "schema": {"type": "string"},
            },
            {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "If-Range", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": _response("The whole WAV", "audio/wav", wav, {**file_headers, **length}),
            "206": _response(
                "The requested range",
                "audio/wav",
                wav,
                {**file_headers, **length, "Content-Range": content_range},
            ),
            "304": _response("If-None-Match matched the ETag", headers=file_headers),
            **_errors("404", "416", "429"),
        },
    }


def _paths(settings: Settings) -> Schema:
    stream_headers = {
        "X-Audio-Sample-Rate": _integer_header("Samples per second", True),
        "X-Audio-Channels": _integer_header("Always 1 (mono)", True),
        "X-Audio-Format": _string_header("Sample format of audio/pcm", enum=["s16le"]),
        "X-Audio-Hash": _string_header("The audio's hash (its /audio URL once stored)", True),
        "X-Cache": _string_header("Tier that had it, or miss", True, enum=["l1", "l2", "disk", "s3", "miss"]),
        **RATE_LIMIT_HEADERS,
    }
    pcm = {"type": "string", "format": "binary"}
    admin: Schema = {"security": [{"ApiKey": []}], "tags": ["admin"]}
    admin_errors = _errors("401", "404")
    speech_errors = _errors("400", "413", "429", "503")
    return {
        "/": {
            "get": {
                "summary": "The browser player",
                "operationId": "player",
                "responses": {
                    "200": _response(
                        "A self-contained page under a strict Content-Security-Policy",
                        "text/html",
                        {"type": "string"},
                        {"Content-Security-Policy": _string_header("Hash-based policy", True)},
                    )
                },
            }
        },
        "/tts": {
            "get": {
                "summary": "Synthesize (or find) the audio; answers with its URL",
                "operationId": "ttsGet",
                "parameters": _speech_parameters(),
                "responses": {
                    "200": _json("Stored; audio_url serves it", _ref("Synthesis"), RATE_LIMIT_HEADERS),
                    **speech_errors,
                },
            },
            "post": {
                "summary": "As GET, with the fields in a JSON body",
                "operationId": "ttsPost",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SpeechFields")}},
                },
                "responses": {
                    "200": _json("Stored; audio_url serves it", _ref("Synthesis"), RATE_LIMIT_HEADERS),
                    **speech_errors,
                },
            },
        },
        "/tts/stream": {
            "get": {
                "summary": "Audio sent chunk by chunk as it is synthesized",
                "description": (
                    "audio/pcm is raw s16le mono; audio/wav has a header with unknown length. An error "
                    "after the first audio can only close the connection early."
                ),
                "operationId": "ttsStream",
                "parameters": [
                    *_speech_parameters(),
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "description": "pcm (default; also when empty) or wav",
                        "schema": {"type": "string", "enum": ["pcm", "wav", ""]},
                    },
                ],
                "responses": {
                    "200": {
                        **_response("The audio, streamed", headers=stream_headers),
                        "content": {"audio/pcm": {"schema": pcm}, "audio/wav": {"schema": pcm}},
                    },
                    **speech_errors,
                },
            }
        },
        "/audio/{hash}.wav": {
            "get": _audio_operation("A stored WAV, with Range and ETag support", with_body=True),
            "head": _audio_operation("Headers only, as for GET", with_body=False),
        },
        "/voices": {
            "get": {
                "summary": "The voices this server speaks with",
                "operationId": "voices",
                "responses": {"200": _json("Voice catalog", _ref("Voices"))},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "responses": {
                    "200": _json(
                        "The process answers",
                        {
                            "type": "object",
                            "required": ["status"],
                            "additionalProperties": False,
                            "properties": {"status": {"const": "ok"}},
                        },
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: voices loaded, not draining",
                "operationId": "readyz",
                "responses": {
                    "200": _json("Ready", _ref("Readiness")),
                    "503": _json("Loading, unready or draining", _ref("Readiness")),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {"200": _response("Text exposition format", "text/plain", {"type": "string"})},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
            }
        },
        "/admin/storage": {
            "get": {
                **admin,
                "summary": "Audio files on this replica's disk, and this worker's L1 size",
                "operationId": "adminStorage",
                "responses": {
                    "200": _json(
                        "Statistics",
                        {
                            "type": "object",
                            "required": ["disk", "l1_bytes"],
                            "properties": {
                                "disk": {
                                    "type": "object",
                                    "additionalProperties": {"type": "integer", "minimum": 0},
                                },
                                "l1_bytes": {"type": "integer", "minimum": 0},
                            },
                        },
                    ),
                    **admin_errors,
                },
            }
        },
        "/admin/cleanup": {
            "post": {
                **admin,
                "summary": "Remove expired audio files now",
                "operationId": "adminCleanup",
                "responses": {
                    "200": _json(
                        "How many files went",
                        {
                            "type": "object",
                            "required": ["removed"],
                            "additionalProperties": False,
                            "properties": {"removed": {"type": "integer", "minimum": 0}},
                        },
                    ),
                    **admin_errors,
                },
            }
        },
        "/admin/audio/{hash}": {
            "delete": {
                **admin,
                "summary": "Delete one entry from every tier",
                "operationId": "adminDeleteAudio",
                "parameters": [_ref("hash", "parameters")],
                "responses": {
                    "200": _json(
                        "Gone (or was never there)",
                        {
                            "type": "object",
                            "required": ["deleted"],
                            "additionalProperties": False,
                            "properties": {"deleted": {"type": "string", "pattern": HASH_PATTERN}},
                        },
                    ),
                    **admin_errors,
                },
            }
        },
        "/admin/purge": {
            "post": {
                **admin,
                "summary": "Purge one hash, or everything",
                "operationId": "adminPurge",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Purge")}}},
                "responses": {
                    "200": _json(
                        "Purged",
                        {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["purged"],
                                    "additionalProperties": False,
                                    "properties": {"purged": {"type": "string", "pattern": HASH_PATTERN}},
                                },
                                {
                                    "type": "object",
                                    "required": ["purged", "removed"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "purged": {"const": "all"},
                                        "removed": {
                                            "type": "object",
                                            "additionalProperties": {"type": "integer", "minimum": 0},
                                        },
                                    },
                                },
                            ]
                        },
                    ),
                    **_errors("400", "401", "404"),
                },
            }
        },
        "/admin/runtime": {
            "get": {
                **admin,
                "summary": "This worker's moving parts (tasks, slots, connections), to spot leaks",
                "operationId": "adminRuntime",
                "responses": {"200": _json("Counters", {"type": "object"}), **admin_errors},
            }
        },
        "/admin/config": {
            "get": {
                **admin,
                "summary": "The effective configuration, secrets masked",
                "operationId": "adminConfig",
                "responses": {"200": _json("Configuration", {"type": "object"}), **admin_errors},
            }
        },
    }


def openapi_document(settings: Settings, voices: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI document for a server running with `settings` and speaking `voices`."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Text-to-speech server",
            "version": "1",
            "description": (
                'Every error is JSON: {"error": {"code", "message"}}. A method a path does not '
                "list answers 405 with an Allow header. Speech and audio requests are rate-limited "
                "per client (address, or API key): 429 with Retry-After and RateLimit-* headers. "
                f"Request bodies over {settings.server.max_body_bytes} bytes get 413."
            ),
        },
        "servers": [{"url": settings.server.public_url.rstrip("/") or "/"}],
        "tags": [{"name": "admin", "description": "Needs X-API-Key; 404 when no keys are configured"}],
        "paths": _paths(settings),
        "components": _components(settings, list(voices or [])),
    }
