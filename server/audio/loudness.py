"""One loudness for every voice: a gain measured once per voice, and a peak limiter.

The gain comes from the integrated loudness (ITU-R BS.1770, pyloudnorm) of fixed warm-up
sentences synthesized with the noise off, so every worker and replica measures the same value;
it is rounded to 0.1 dB so that rounding differences between providers cannot change it. Never
a per-sentence normalization: that makes loudness jump between chunks.

pyloudnorm filters with SciPy, which costs a worker about 66 MiB for the rest of its life to
measure one figure per voice at load. So a worker measures in a short-lived child process
(`python -m server.audio.loudness`, about a second, once per voice) and never imports either.

The limiter is memoryless (a soft knee on each sample), so windows of an utterance limited one
by one give exactly the samples of the whole utterance limited at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

import numpy as np

LIMIT_KNEE: Final = 0.8  # samples below this pass unchanged (about -1.9 dBFS)
LIMIT_CEILING: Final = 0.95  # and nothing goes above this (about -0.45 dBFS)


METER_TIMEOUT_S: Final = 120.0
# Where `server` is importable from, whether it runs from a checkout or is installed.
_IMPORT_ROOT: Final = Path(__file__).resolve().parents[2]


def integrated_lufs(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of mono float samples in LUFS (at least 0.4 s of audio), measured by
    pyloudnorm in a child process."""
    data = np.asarray(samples, dtype="<f8").reshape(-1).tobytes()
    done = subprocess.run(
        [sys.executable, "-m", __name__, str(sample_rate)],
        input=data,
        capture_output=True,
        cwd=_IMPORT_ROOT,
        timeout=METER_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the loudness meter failed: {done.stderr.decode(errors='replace').strip()}")
    return float(done.stdout)


def _measure(sample_rate: int, data: bytes) -> float:
    """pyloudnorm's integrated loudness of float64 samples (the child's side)."""
    import pyloudnorm  # only the child process imports it, and SciPy with it

    samples = np.frombuffer(data, dtype="<f8")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(samples))


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


if __name__ == "__main__":  # the child: float64 samples on stdin, the rate as the argument
    print(repr(_measure(int(sys.argv[1]), sys.stdin.buffer.read())))
