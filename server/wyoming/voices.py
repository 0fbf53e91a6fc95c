"""Our voices as Wyoming sees them: the `info` answer, and a `synthesize` voice back to a voice id.

Home Assistant lists the voices of the one TTS program we describe and sends back a voice name
(our voice id), a language, or nothing; a speaker is a multi-speaker voice's speaker name.
"""

from __future__ import annotations

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker
from wyoming.tts import SynthesizeVoice

from server.errors import UnknownVoice
from server.settings import WyomingSettings
from server.synthesis.catalog import VoiceInfo

PROGRAM_NAME = "streaming-tts"
PROGRAM_DESCRIPTION = "Piper voices with a shared cache, fair scheduling and streaming"


def describe(voices: list[VoiceInfo], settings: WyomingSettings) -> Info:
    """One TTS program listing every loaded voice; it takes streamed text."""
    default = Attribution(name=settings.attribution_name, url=settings.attribution_url)
    return Info(
        tts=[
            TtsProgram(
                name=PROGRAM_NAME,
                description=PROGRAM_DESCRIPTION,
                attribution=default,
                installed=True,
                version=None,
                voices=[
                    TtsVoice(
                        name=voice.id,
                        description=voice.id,
                        attribution=Attribution(*voice.attribution) if voice.attribution else default,
                        installed=True,
                        version=None,
                        languages=[voice.language],
                        speakers=[TtsVoiceSpeaker(name=s) for s in voice.speakers]
                        if voice.num_speakers > 1
                        else None,
                    )
                    for voice in voices
                ],
                supports_synthesize_streaming=True,
            )
        ]
    )


def _language_key(language: str) -> str:
    return language.replace("-", "_").lower()


def select_voice(voices: list[VoiceInfo], default: str, wanted: SynthesizeVoice | None) -> str:
    """Our voice id for a request: by name, else the first voice of the language, else the default."""
    if wanted is None or (wanted.name is None and wanted.language is None):
        return default
    ids = [voice.id for voice in voices]
    if wanted.name is not None:
        if wanted.name in ids:
            return wanted.name
        raise UnknownVoice(f"unknown voice {wanted.name!r}; available: {', '.join(ids)}")
    language = _language_key(wanted.language or "")
    for match in (
        lambda code: code == language,  # en_US asks for en_US
        lambda code: code.split("_")[0] == language,  # en asks for any English voice
    ):
        for voice in voices:
            if match(_language_key(voice.language)):
                return voice.id
    raise UnknownVoice(f"no voice for language {wanted.language!r}; available: {', '.join(ids)}")
