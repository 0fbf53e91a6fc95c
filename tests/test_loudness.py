"""Spec of loudness: one measured gain per voice, a memoryless limiter, and a per-request volume."""

from __future__ import annotations

import io
import wave

import numpy as np

from server.audio.loudness import LIMIT_CEILING, gain_to, integrated_lufs, limit
from tests.conftest import ServerProcess, query, unique_text
from tests.test_api import assert_error

TARGET_LUFS = -20.0  # synthesis.loudness_lufs in config.yaml
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest. "
    "Every voice should sound about as loud as every other voice, whatever it says. "
)


def tone(amplitude: float, seconds: float = 2.0, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_twice_the_amplitude_is_six_decibels_louder():
    quiet, loud = integrated_lufs(tone(0.1), 22050), integrated_lufs(tone(0.2), 22050)
    assert round(loud - quiet, 2) == 6.02


def test_the_gain_brings_a_level_to_the_target_in_tenths_of_a_decibel():
    assert gain_to(-20.0, -24.86) == 10 ** (4.9 / 20)
    assert gain_to(-20.0, -20.0) == 1.0
    assert gain_to(-20.0, -14.0) == 10 ** (-6.0 / 20)


def test_the_limiter_gives_the_same_samples_window_by_window():
    samples = np.linspace(-2.0, 2.0, 9000, dtype=np.float32)
    whole = limit(samples.copy())
    windows = np.concatenate([limit(part.copy()) for part in np.array_split(samples, 7)])
    assert np.array_equal(whole, windows)
    assert float(np.abs(whole).max()) <= LIMIT_CEILING


def lufs_of(server: ServerProcess, **fields: object) -> float:
    meta = server.get("/tts?" + query(**fields)).json()
    with wave.open(io.BytesIO(server.get(meta["audio_path"]).body)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return integrated_lufs(pcm.astype(np.float32) / 32767.0, wav.getframerate())


def test_speech_comes_out_at_the_loudness_target(server):
    lufs = lufs_of(server, text=LONG_TEXT + unique_text("Loud"))
    assert abs(lufs - TARGET_LUFS) < 2.0, lufs  # measured on other sentences, with the noise on


def test_volume_scales_the_level(server):
    text = LONG_TEXT + unique_text("Volume")
    half, quarter = lufs_of(server, text=text, volume=0.5), lufs_of(server, text=text, volume=0.25)
    assert abs((half - quarter) - 6.02) < 1.0  # two syntheses: the noise differs a little


def test_volume_out_of_range_is_400(server):
    message = assert_error(server.get("/tts?" + query(text="Hi.", volume=9)), 400, "invalid_request")
    assert message == "volume: input should be less than or equal to 4"
