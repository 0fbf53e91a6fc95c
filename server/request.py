"""Turn validated fields into the frozen `SpeechRequest` that everything downstream receives.

The shape of the fields (types, unknown names, speed's range) is checked by the models in
`server.schemas`; the rules that need the running server (the text limit after normalization, the
default voice) are here. Key, cache and synthesis take only the parsed object, so speed, text and
voice are validated in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.errors import InvalidRequest, TextTooLong
from server.schemas import MAX_SPEED, MIN_SPEED, SPEED_PRESETS, SpeechFields, TTSFields, speed_label, validate
from server.text.clean import clean_document, normalize_text
from server.text.spans import TextFormat

__all__ = ["MAX_SPEED", "MIN_SPEED", "SPEED_PRESETS", "SpeechRequest", "parse_speech_request", "parse_speed"]


@dataclass(frozen=True)
class SpeechRequest:
    """What to say and how; `text` is already normalized."""

    text: str
    voice: str
    speaker: str | None
    length_scale: float
    speed: str | float  # as the client named it: a preset or a rate, echoed in responses
    text_format: TextFormat = TextFormat.PLAIN
    volume: float = 1.0  # times the voice's loudness-matched level (peaks are limited)
    document: str = ""  # markdown or SSML as sent (Unicode-cleaned, lines kept); plain: `text`

    @property
    def source(self) -> str:
        """The text the front-end reads, and the key names: plain text normalized, markup as sent."""
        return self.text if self.text_format is TextFormat.PLAIN else self.document


def length_scale(label: str | float | None) -> tuple[str | float, float]:
    """A validated speed as (label, length_scale); none given is normal."""
    if label is None:
        return "normal", 1.0
    if isinstance(label, str):
        return label, SPEED_PRESETS[label]
    return label, 1.0 / label


def parse_speed(raw: object) -> tuple[str | float, float]:
    """A preset name or a rate in [0.25, 4]; returns (label, length_scale)."""
    try:
        return length_scale(speed_label(raw))
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="speed") from None


def speech_request(
    fields: SpeechFields,
    *,
    default_voice: str,
    max_chars: int,
    default_format: TextFormat | str = TextFormat.PLAIN,
) -> SpeechRequest:
    """Validated fields as a `SpeechRequest`: text normalized and within the limit, voice resolved."""
    if len(fields.text) > max_chars * 4:
        # Cheap early bound before normalizing huge input; the exact limit is checked below.
        raise TextTooLong(f"text is longer than {max_chars} characters", param="text")
    text = normalize_text(fields.text)
    if not text:
        raise InvalidRequest("text is empty", param="text")
    if len(text) > max_chars:
        raise TextTooLong(f"text is {len(text)} characters; the limit is {max_chars}", param="text")
    label, scale = length_scale(fields.speed)
    text_format = TextFormat(fields.text_format or default_format)
    return SpeechRequest(
        text=text,
        voice=fields.voice or default_voice,
        speaker=fields.speaker,
        length_scale=scale,
        speed=label,
        text_format=text_format,
        volume=1.0 if fields.volume is None else fields.volume,
        document="" if text_format is TextFormat.PLAIN else clean_document(fields.text),
    )


def parse_speech_request(
    fields: Mapping[str, object],
    *,
    default_voice: str,
    max_chars: int,
    model: type[SpeechFields] = TTSFields,
    default_format: TextFormat | str = TextFormat.PLAIN,
) -> SpeechRequest:
    """Validate raw fields (query arguments or a JSON object) into a `SpeechRequest`."""
    return speech_request(
        validate(model, fields),
        default_voice=default_voice,
        max_chars=max_chars,
        default_format=default_format,
    )
