"""The cache key: one sha256 per distinct audio, the same in every process and on every machine."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Final

# Bump when the bytes produced for the same inputs change (framing, fades, chunking rules).
# 2: Piper's pad after BOS, whole sentences as utterances, windowed synthesis.
# 3: the text front-end (formats, pysbd sentences, normalization, Piper's sentence pauses).
# 4: no pause where a voice or rate changes inside a sentence; word timings (stored beside the
#    audio) tile each utterance.
AUDIO_FORMAT_VERSION: Final = 4
KEY_PATTERN: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KeyParts:
    """Everything that changes the synthesized bytes."""

    voice_id: str
    model_digest: str
    speaker_id: int | None
    text: str  # normalized
    length_scale: float
    noise_scale: float
    noise_w: float
    render: tuple[float, ...]  # gain, silence, fade, window sizes and the sentence bound from config
    # The front-end: text_format, normalization version, its settings, and any other voice the
    # document switches to (id and model digest); `text` is then the document as sent.
    front: tuple[str | int | float | bool, ...] = ()


def audio_key(parts: KeyParts) -> str:
    payload = [
        AUDIO_FORMAT_VERSION,
        parts.voice_id,
        parts.model_digest,
        parts.speaker_id,
        parts.text,
        round(parts.length_scale, 4),
        round(parts.noise_scale, 4),
        round(parts.noise_w, 4),
        [round(value, 4) for value in parts.render],
        list(parts.front),
    ]
    canonical = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def is_key(value: str) -> bool:
    return KEY_PATTERN.fullmatch(value) is not None


def entry_name(key: str, suffix: str) -> str:
    """The name one rendition of the audio has in every tier: `{key}.wav`, `{key}.mp3`, ..."""
    return f"{key}.{suffix}"
