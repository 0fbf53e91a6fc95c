"""OpenAI's model and voice names, and how they map onto this server's voices.

OpenAI clients send a model (`tts-1`, ...) and one of OpenAI's voice names (`alloy`, ...). Our own
voice ids work in either place; OpenAI's names go through the `openai.voices` table, and an
unmapped OpenAI name speaks with the default voice, so a client's default (Open WebUI's `alloy`)
works without configuration.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from server.errors import ModelNotFound, UnknownVoice

MODELS: Final = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# Dated snapshots of gpt-4o-mini-tts that the SDK lists; accepted, not advertised.
MODEL_SNAPSHOTS: Final = ("gpt-4o-mini-tts-2025-03-20", "gpt-4o-mini-tts-2025-12-15")
OPENAI_VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)


def resolve_voice(
    model: str, voice: str, *, voices: Collection[str], aliases: Mapping[str, str], default: str
) -> str:
    """Our voice id for an OpenAI (model, voice) pair; 400 for an unknown model or voice.

    One of our voice ids as `voice` wins; then one as `model`; then OpenAI's name through the
    alias table, else the default voice.
    """
    if model not in voices and model not in MODELS and model not in MODEL_SNAPSHOTS:
        raise ModelNotFound(
            f"model {model!r} does not exist; use one of {', '.join(MODELS)} or a voice id",
            param="model",
        )
    if voice in voices:
        return voice
    if model in voices:
        return model
    if voice in aliases:
        return aliases[voice]
    if voice.lower() in OPENAI_VOICES:
        return aliases.get(voice.lower(), default)
    raise UnknownVoice(
        f"unknown voice {voice!r}; use one of {', '.join([*OPENAI_VOICES, *voices])}", param="voice"
    )
