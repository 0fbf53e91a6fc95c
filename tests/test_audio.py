"""Spec of PCM and WAV framing: fixed loudness, click-free edges, headers for files and streams."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from server.audio.pcm import (
    STREAMING_SIZE,
    WAV_HEADER_BYTES,
    duration_s,
    parse_wav,
    silence,
    to_pcm16,
    wav_bytes,
    wav_header,
)

RATE = 22050


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def square(amplitude: float, n: int = 2205) -> np.ndarray:
    """A test tone whose peak is exactly `amplitude` (a sampled sine may miss its peak)."""
    return np.resize(np.array([amplitude, -amplitude], dtype=np.float32), n)


def test_pcm_is_two_bytes_per_sample_little_endian():
    assert to_pcm16(np.array([0.5, -0.5, 0.0], dtype=np.float32), gain=1.0, fade_samples=0) == struct.pack(
        "<3h", 16384, -16384, 0
    )


def test_full_scale_is_limited_below_the_ceiling():
    pcm = to_pcm16(np.array([1.0, -1.0], dtype=np.float32), gain=1.0, fade_samples=0)
    assert samples(pcm).tolist() == [30490, -30490]  # 0.8 + 0.15 tanh(0.2 / 0.15) of full scale


def test_quiet_input_stays_quiet():
    # Per-chunk peak normalization would make a whispered sentence as loud as a shouted one.
    pcm = to_pcm16(square(0.01), gain=1.0, fade_samples=0)
    assert int(np.abs(samples(pcm)).max()) == 328


def test_gain_is_the_same_fixed_factor_for_every_chunk():
    quiet = samples(to_pcm16(square(0.01), gain=2.0, fade_samples=0))
    loud = samples(to_pcm16(square(0.4), gain=2.0, fade_samples=0))
    assert int(np.abs(quiet).max()) == 655
    assert int(np.abs(loud).max()) == 26214


def test_values_beyond_full_scale_stay_under_the_ceiling_and_below_the_knee_pass_unchanged():
    pcm = to_pcm16(np.array([1.5, -3.0, 0.6], dtype=np.float32), gain=1.0, fade_samples=0)
    assert samples(pcm).tolist() == [31128, -31129, 19660]  # ceiling 0.95: 31129


def test_gain_can_push_into_the_limiter():
    pcm = to_pcm16(np.array([0.75, -0.75], dtype=np.float32), gain=2.0, fade_samples=0)
    assert samples(pcm).tolist() == [31128, -31128]


def test_the_limiter_keeps_the_order_of_levels():
    ramp = np.linspace(0.0, 4.0, 4001, dtype=np.float32)
    limited = samples(to_pcm16(ramp, gain=1.0, fade_samples=0))
    assert bool(np.all(np.diff(limited) >= 0))
    assert int(limited.max()) <= 31129


def test_fades_start_and_end_at_zero():
    pcm = samples(to_pcm16(np.full(1000, 0.8, dtype=np.float32), gain=1.0, fade_samples=88))
    assert pcm[0] == 0
    assert pcm[-1] == 0
    assert np.all(np.diff(pcm[:88].astype(np.int32)) > 0)
    assert np.all(np.diff(pcm[-88:].astype(np.int32)) < 0)
    assert np.all(pcm[88:-88] == 26214)


def test_fade_is_limited_to_half_a_short_chunk():
    pcm = samples(to_pcm16(np.full(10, 0.5, dtype=np.float32), gain=1.0, fade_samples=100))
    assert pcm.tolist() == [0, 3277, 6553, 9830, 13107, 13107, 9830, 6553, 3277, 0]


def test_no_fade_keeps_the_edges():
    pcm = samples(to_pcm16(np.full(4, 0.5, dtype=np.float32), gain=1.0, fade_samples=0))
    assert pcm.tolist() == [16384] * 4


def test_empty_audio_is_empty_pcm():
    assert to_pcm16(np.zeros(0, dtype=np.float32), gain=1.0, fade_samples=88) == b""


def test_input_samples_are_not_modified():
    audio = np.full(100, 0.5, dtype=np.float32)
    to_pcm16(audio, gain=3.0, fade_samples=10)
    assert np.all(audio == 0.5)


@pytest.mark.parametrize(("seconds", "length"), [(0.0, 0), (0.2, 8820), (1.0, 44100)])
def test_silence_is_zero_samples_of_the_given_duration(seconds, length):
    assert silence(RATE, seconds) == bytes(length)


def test_wav_header_is_a_canonical_44_byte_pcm_header():
    header = wav_header(RATE, 1000)
    assert len(header) == WAV_HEADER_BYTES
    assert header == (
        b"RIFF"
        + struct.pack("<I", 1036)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", 1000)
    )


def test_streaming_header_declares_unknown_length():
    header = wav_header(RATE, None)
    assert header[4:8] == b"\xff\xff\xff\xff"
    assert header[40:44] == b"\xff\xff\xff\xff"
    assert struct.unpack("<I", header[40:44])[0] == STREAMING_SIZE
    assert header[8:40] == wav_header(RATE, 0)[8:40]


def test_wav_round_trips_through_parse_wav():
    pcm = to_pcm16(square(0.3), gain=1.0, fade_samples=88)
    rate, data = parse_wav(wav_bytes(RATE, pcm))
    assert rate == RATE
    assert bytes(data) == pcm


def test_empty_wav_round_trips():
    rate, data = parse_wav(wav_bytes(16000, b""))
    assert (rate, bytes(data)) == (16000, b"")


def test_duration_counts_two_byte_mono_samples():
    assert duration_s(RATE, 44100) == 1.0


@pytest.mark.parametrize("cut", [1, 2, 100])
def test_parse_wav_rejects_truncated_data(cut):
    wav = wav_bytes(RATE, bytes(200))
    with pytest.raises(ValueError, match="sizes do not match the data"):
        parse_wav(wav[:-cut])


def test_parse_wav_rejects_a_truncated_header():
    with pytest.raises(ValueError, match="too short for a WAV header"):
        parse_wav(wav_header(RATE, 0)[:43])


def test_parse_wav_rejects_trailing_bytes():
    with pytest.raises(ValueError, match="sizes do not match the data"):
        parse_wav(wav_bytes(RATE, bytes(200)) + b"\0\0")


def test_parse_wav_rejects_a_streaming_header():
    with pytest.raises(ValueError, match="sizes do not match the data"):
        parse_wav(wav_header(RATE, None) + bytes(200))


@pytest.mark.parametrize(
    "foreign",
    [
        b"OggS" + bytes(60),
        b"ID3\x04" + bytes(60),
        b"\x80\x04\x95" + bytes(60),  # a pickle
        b"RIFF" + struct.pack("<I", 36) + b"AVI " + bytes(40),
    ],
)
def test_parse_wav_rejects_foreign_data(foreign):
    with pytest.raises(ValueError, match="not a canonical PCM WAV"):
        parse_wav(foreign)


def test_parse_wav_rejects_stereo_or_other_sample_formats():
    stereo = bytearray(wav_bytes(RATE, bytes(8)))
    stereo[22:24] = struct.pack("<H", 2)
    with pytest.raises(ValueError, match="not mono s16le"):
        parse_wav(bytes(stereo))
    float32 = bytearray(wav_bytes(RATE, bytes(8)))
    float32[20:22] = struct.pack("<H", 3)
    with pytest.raises(ValueError, match="not mono s16le"):
        parse_wav(bytes(float32))
