"""Parse a client's fields once into a frozen `SpeechRequest`; every rule lives here.

Handlers pass the raw query or JSON fields; everything downstream (key, cache, synthesis) takes the
parsed object, so speed, text and voice are validated in exactly one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from server.audio.formats import FORMATS, AudioFormat, format_names
from server.errors import InvalidRequest, TextTooLong
from server.synthesis.text import normalize_text

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
FIELDS: Final = frozenset({"text", "speed", "voice", "speaker", "format"})


@dataclass(frozen=True)
class SpeechRequest:
    """What to say and how; `text` is already normalized."""

    text: str
    voice: str
    speaker: str | None
    length_scale: float
    speed: str | float  # as the client named it: a preset or a rate, echoed in responses


def parse_speed(raw: object) -> tuple[str | float, float]:
    """A preset name or a rate in [0.25, 4]; returns (label, length_scale)."""
    if raw is None or raw == "":
        return "normal", 1.0
    if isinstance(raw, str) and raw.strip().lower() in SPEED_PRESETS:
        name = raw.strip().lower()
        return name, SPEED_PRESETS[name]
    if isinstance(raw, bool):
        raise InvalidRequest(f"speed must be a number or one of {', '.join(SPEED_PRESETS)}")
    try:
        rate = float(raw) if isinstance(raw, int | float | str) else math.nan
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate):
        raise InvalidRequest(
            f"speed must be a number from {MIN_SPEED} to {MAX_SPEED} or one of {', '.join(SPEED_PRESETS)}"
        )
    if not MIN_SPEED <= rate <= MAX_SPEED:
        raise InvalidRequest(f"speed must be from {MIN_SPEED} to {MAX_SPEED}, got {rate:g}")
    return rate, 1.0 / rate


def parse_format(raw: object, default: str) -> AudioFormat:
    """An output format from the one table; anything else is a 400 that lists the formats."""
    if raw is None or raw == "":
        return FORMATS[default]
    if not isinstance(raw, str) or raw.strip().lower() not in FORMATS:
        raise InvalidRequest(f"format must be one of {format_names()}")
    return FORMATS[raw.strip().lower()]


def _optional_str(fields: Mapping[str, object], name: str) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRequest(f"{name} must be a string")
    return str(value)


def parse_speech_request(
    fields: Mapping[str, object], *, default_voice: str, max_chars: int
) -> SpeechRequest:
    """Validate raw fields (query arguments or a JSON object) into a `SpeechRequest`."""
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field: {unknown[0]}")
    raw_text = fields.get("text")
    if raw_text is None:
        raise InvalidRequest("text is required")
    if not isinstance(raw_text, str):
        raise InvalidRequest("text must be a string")
    if len(raw_text) > max_chars * 4:
        # Cheap early bound before normalizing huge input; the exact limit is checked below.
        raise TextTooLong(f"text is longer than {max_chars} characters", param="text")
    text = normalize_text(raw_text)
    if not text:
        raise InvalidRequest("text is empty", param="text")
    if len(text) > max_chars:
        raise TextTooLong(f"text is {len(text)} characters; the limit is {max_chars}", param="text")
    label, length_scale = parse_speed(fields.get("speed"))
    return SpeechRequest(
        text=text,
        voice=_optional_str(fields, "voice") or default_voice,
        speaker=_optional_str(fields, "speaker"),
        length_scale=length_scale,
        speed=label,
    )
