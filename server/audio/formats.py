"""The one table of audio formats the server speaks: name, file extension, content type, codec.

Every front door, the cache and the encoders look formats up here, so a format is added in one
place. `rate` is the sample rate a format forces (Opus only runs at a few rates); `None` keeps the
voice's own rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class AudioFormat:
    """One output format and how it is made."""

    name: str  # what clients write in `format` / `response_format`
    ext: str  # the file extension of `/audio/{hash}.{ext}` and of the cache entry's name
    content_type: str
    codec: str | None  # the FFmpeg encoder; None: PCM written by `server.audio.pcm`
    container: str | None  # the FFmpeg muxer the packets go into
    rate: int | None = None  # a sample rate the format needs; None keeps the input's
    # Whether a stream of this format is byte for byte the file: a finished WAV carries its real
    # sizes and a finished FLAC its total samples and MD5, which a stream cannot know up front.
    stream_is_file: bool = True


FORMATS: Final[dict[str, AudioFormat]] = {
    f.name: f
    for f in (
        AudioFormat("mp3", "mp3", "audio/mpeg", "libmp3lame", "mp3"),
        # 48 kHz is what every Opus decoder outputs, so the stored rate and the decoded one agree.
        AudioFormat("opus", "opus", "audio/ogg", "libopus", "ogg", rate=48000),
        AudioFormat("aac", "aac", "audio/aac", "aac", "adts"),
        AudioFormat("flac", "flac", "audio/flac", "flac", "flac", stream_is_file=False),
        AudioFormat("wav", "wav", "audio/wav", None, None, stream_is_file=False),
        AudioFormat("pcm", "pcm", "audio/pcm", None, None),
    )
}
# Rates a client may ask for beyond a format's own (OpenAI's `pcm` is 24 kHz whatever the voice).
RESAMPLED_RATES: Final = (24000,)
WAV: Final = FORMATS["wav"]
PCM: Final = FORMATS["pcm"]
BY_EXTENSION: Final[dict[str, AudioFormat]] = {f.ext: f for f in FORMATS.values()}


def audio_format(name: str) -> AudioFormat:
    """The format called `name`; KeyError for anything else."""
    return FORMATS[name]


def format_names() -> str:
    """The formats as a client would list them in an error message."""
    return ", ".join(FORMATS)


@dataclass(frozen=True)
class Rendition:
    """One way to hand out a key's audio: a format, and a sample rate when it is not the natural one."""

    format: AudioFormat
    rate: int | None = None  # None: the voice's rate (or the one the format needs)

    @property
    def suffix(self) -> str:
        """The entry's name after the key in every cache tier: `mp3`, `opus`, `24000.pcm`, ..."""
        return self.format.ext if self.rate is None else f"{self.rate}.{self.format.ext}"

    def sample_rate(self, voice_rate: int) -> int:
        return self.format.rate or self.rate or voice_rate


def rendition_suffixes() -> tuple[str, ...]:
    """Every suffix a key's entries may carry (to delete them all)."""
    return tuple(rendition_content_types())


def rendition_content_types() -> dict[str, str]:
    """Every suffix a key's entries may carry, with its content type (for the object store)."""
    plain = {f.ext: f.content_type for f in FORMATS.values()}
    resampled = {f"{rate}.{f.ext}": f.content_type for rate in RESAMPLED_RATES for f in FORMATS.values()}
    return plain | resampled
