"""One loudness for every voice: a gain measured once per voice, and a peak limiter.

The gain comes from the integrated loudness (ITU-R BS.1770-4) of fixed warm-up sentences
synthesized with the noise off, so every worker and replica measures the same value; it is
rounded to 0.1 dB so that rounding differences between providers cannot change it. Never a
per-sentence normalization: that makes loudness jump between chunks.

The meter is pyloudnorm's algorithm (the same K-weighting biquads, blocks and gates) in numpy and
a plain loop for the two filters: pyloudnorm filters with SciPy, whose import alone holds about
80 MiB in every worker for a measurement made once per voice at load. tests/test_loudness.py
checks that both give the same figure.

The limiter is memoryless (a soft knee on each sample), so windows of an utterance limited one
by one give exactly the samples of the whole utterance limited at once.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

LIMIT_KNEE: Final = 0.8  # samples below this pass unchanged (about -1.9 dBFS)
LIMIT_CEILING: Final = 0.95  # and nothing goes above this (about -0.45 dBFS)
BLOCK_S: Final = 0.4  # gating blocks of 400 ms
BLOCK_STEP: Final = 0.25  # overlapping by 75 %
ABSOLUTE_GATE_LUFS: Final = -70.0
RELATIVE_GATE_LU: Final = -10.0


def integrated_lufs(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of mono float samples in LUFS (at least 0.4 s of audio)."""
    weighted = np.asarray(samples, dtype=np.float64).reshape(-1)
    if weighted.size < BLOCK_S * sample_rate:
        raise ValueError("loudness needs at least 0.4 s of audio")
    for b, a in k_weighting(sample_rate):
        weighted = biquad(b, a, weighted)
    blocks = int(np.round((weighted.size / sample_rate - BLOCK_S) / (BLOCK_S * BLOCK_STEP))) + 1
    power = np.empty(blocks)
    for j in range(blocks):
        lower = int(BLOCK_S * (j * BLOCK_STEP) * sample_rate)
        upper = int(BLOCK_S * (j * BLOCK_STEP + 1) * sample_rate)
        power[j] = (1.0 / (BLOCK_S * sample_rate)) * np.sum(np.square(weighted[lower:upper]))
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10.0 * np.log10(power)
    above = power[loudness >= ABSOLUTE_GATE_LUFS]
    if not above.size:
        return -math.inf
    relative = -0.691 + 10.0 * math.log10(float(np.mean(above))) + RELATIVE_GATE_LU
    gated = power[(loudness > relative) & (loudness > ABSOLUTE_GATE_LUFS)]
    if not gated.size:
        return -math.inf
    return float(-0.691 + 10.0 * np.log10(np.mean(gated)))


def k_weighting(sample_rate: int) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """BS.1770's two stages as (b, a) biquads at `sample_rate`: a high shelf, then a high pass."""
    stages = []
    # The shelf: +4 dB above about 1.5 kHz (the head's response), Q 1/sqrt(2).
    gain, w0 = 10 ** (4.0 / 40.0), 2.0 * math.pi * 1500.0 / sample_rate
    alpha, cos, root = math.sin(w0) / (2.0 / math.sqrt(2)), math.cos(w0), math.sqrt(gain)
    b = (
        gain * ((gain + 1) + (gain - 1) * cos + 2 * root * alpha),
        -2 * gain * ((gain - 1) + (gain + 1) * cos),
        gain * ((gain + 1) + (gain - 1) * cos - 2 * root * alpha),
    )
    a = ((gain + 1) - (gain - 1) * cos + 2 * root * alpha, 2 * ((gain - 1) - (gain + 1) * cos))
    a += ((gain + 1) - (gain - 1) * cos - 2 * root * alpha,)
    stages.append(_normalized(b, a))
    # The high pass at 38 Hz, Q 0.5 (the RLB curve).
    w0 = 2.0 * math.pi * 38.0 / sample_rate
    alpha, cos = math.sin(w0) / (2.0 * 0.5), math.cos(w0)
    b = ((1 + cos) / 2, -(1 + cos), (1 + cos) / 2)
    stages.append(_normalized(b, (1 + alpha, -2 * cos, 1 - alpha)))
    return stages


def _normalized(
    b: tuple[float, ...], a: tuple[float, ...]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    return (b[0] / a[0], b[1] / a[0], b[2] / a[0]), (1.0, a[1] / a[0], a[2] / a[0])


def biquad(b: tuple[float, float, float], a: tuple[float, float, float], x: np.ndarray) -> np.ndarray:
    """`scipy.signal.lfilter(b, a, x)` for one normalized biquad: direct form II transposed."""
    b0, b1, b2 = b
    _, a1, a2 = a
    z1 = z2 = 0.0
    out = x.tolist()
    for i, sample in enumerate(out):
        y = b0 * sample + z1
        z1 = b1 * sample - a1 * y + z2
        z2 = b2 * sample - a2 * y
        out[i] = y
    return np.array(out)


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
