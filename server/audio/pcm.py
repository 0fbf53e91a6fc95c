"""PCM and WAV framing: model floats to int16 chunks that join without clicks or loudness jumps.

One fixed gain per voice for every chunk, peaks limited (never per-sentence peak normalization,
which makes loudness jump between sentences), short fades at chunk edges where the model leaves a
step, and a WAV header that works both for a finished file and for a stream of unknown length.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

from server.audio.loudness import limit

SAMPLE_WIDTH: Final = 2  # s16le
CHANNELS: Final = 1
WAV_HEADER_BYTES: Final = 44
STREAMING_SIZE: Final = 0xFFFFFFFF  # "unknown length", accepted by browsers, ffmpeg and sox


def to_pcm16(
    audio: np.ndarray, gain: float, fade_samples: int, *, fade_in: bool = True, fade_out: bool = True
) -> bytes:
    """Float samples in [-1, 1] to s16le bytes with a fixed gain, peaks limited, and faded edges.

    Only an utterance's own edges are faded: windows inside an utterance join seamlessly as they
    are, and a fade there would dip the speech.
    """
    samples = np.asarray(audio, dtype=np.float32).reshape(-1) * np.float32(gain)
    fade = min(fade_samples, samples.size // 2)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32)
        if fade_in:
            samples[:fade] *= ramp
        if fade_out:
            samples[-fade:] *= ramp[::-1]
    limit(samples)
    return (samples * 32767.0).round().astype("<i2").tobytes()


def silence(sample_rate: int, seconds: float) -> bytes:
    return bytes(int(sample_rate * seconds) * SAMPLE_WIDTH * CHANNELS)


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A canonical 44-byte PCM WAV header; `None` means a stream of unknown length."""
    data_size = STREAMING_SIZE if data_bytes is None else data_bytes
    riff_size = STREAMING_SIZE if data_bytes is None else 36 + data_bytes
    byte_rate = sample_rate * CHANNELS * SAMPLE_WIDTH
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,
        1,
        CHANNELS,
        sample_rate,
        byte_rate,
        CHANNELS * SAMPLE_WIDTH,
        SAMPLE_WIDTH * 8,
        b"data",
        data_size,
    )


def wav_bytes(sample_rate: int, pcm: bytes) -> bytes:
    return wav_header(sample_rate, len(pcm)) + pcm


def parse_wav(data: bytes) -> tuple[int, memoryview]:
    """Sample rate and PCM of a WAV this server wrote; ValueError for anything else."""
    if len(data) < WAV_HEADER_BYTES:
        raise ValueError("too short for a WAV header")
    (
        riff,
        riff_size,
        wave,
        fmt,
        fmt_size,
        pcm_format,
        channels,
        rate,
        _byte_rate,
        _align,
        bits,
        data_tag,
        data_size,
    ) = struct.unpack("<4sI4s4sIHHIIHH4sI", data[:WAV_HEADER_BYTES])
    if (riff, wave, fmt, data_tag) != (b"RIFF", b"WAVE", b"fmt ", b"data") or fmt_size != 16:
        raise ValueError("not a canonical PCM WAV")
    if (pcm_format, channels, bits) != (1, CHANNELS, SAMPLE_WIDTH * 8):
        raise ValueError("not mono s16le")
    if data_size != len(data) - WAV_HEADER_BYTES or riff_size != 36 + data_size:
        raise ValueError("sizes do not match the data")
    return rate, memoryview(data)[WAV_HEADER_BYTES:]


def duration_s(sample_rate: int, pcm_bytes: int) -> float:
    return pcm_bytes / (sample_rate * SAMPLE_WIDTH * CHANNELS)
