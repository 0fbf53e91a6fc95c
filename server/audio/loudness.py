"""One loudness for every voice: a gain measured once per voice, and a peak limiter.

The gain comes from the integrated loudness (ITU-R BS.1770, pyloudnorm) of fixed warm-up
sentences synthesized with the noise off, so every worker and replica measures the same value;
it is rounded to 0.1 dB so that rounding differences between providers cannot change it. Never
a per-sentence normalization: that makes loudness jump between chunks.

The limiter is memoryless (a soft knee on each sample), so windows of an utterance limited one
by one give exactly the samples of the whole utterance limited at once.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyloudnorm

LIMIT_KNEE: Final = 0.8  # samples below this pass unchanged (about -1.9 dBFS)
LIMIT_CEILING: Final = 0.95  # and nothing goes above this (about -0.45 dBFS)


def integrated_lufs(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of mono float samples in LUFS (at least 0.4 s of audio)."""
    meter = pyloudnorm.Meter(sample_rate)
    return float(meter.integrated_loudness(np.asarray(samples, dtype=np.float64).reshape(-1)))


def gain_to(target_lufs: float, measured_lufs: float) -> float:
    """The linear gain that brings `measured_lufs` to `target_lufs`, in steps of 0.1 dB."""
    return float(10 ** (round(target_lufs - measured_lufs, 1) / 20))


def limit(samples: np.ndarray) -> np.ndarray:
    """Peaks above the knee bent smoothly towards the ceiling, in place (float32)."""
    magnitude = np.abs(samples)
    loud = magnitude > LIMIT_KNEE
    if loud.any():
        room = LIMIT_CEILING - LIMIT_KNEE
        bent = LIMIT_KNEE + room * np.tanh((magnitude[loud] - LIMIT_KNEE) / room)
        samples[loud] = np.copysign(bent, samples[loud]).astype(samples.dtype)
    return samples
