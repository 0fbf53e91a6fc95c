"""One loudness for every voice: a gain measured once per voice, and a peak limiter.

The gain comes from the integrated loudness (ITU-R BS.1770, pyloudnorm) of fixed warm-up
sentences synthesized with the noise off, so every worker and replica measures the same value;
it is rounded to 0.1 dB so that rounding differences between providers cannot change it. Never
a per-sentence normalization: that makes loudness jump between chunks.

pyloudnorm filters with SciPy, which costs a worker about 66 MiB for the rest of its life to
measure one figure per voice at load. So a worker measures in a short-lived child process
(`python -m server.audio.loudness`, once per voice) and never imports either. The child is
started before the voice loads (`LoudnessMeter`), so its second of imports runs beside the
graph's loading instead of after it.

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


class LoudnessMeter:
    """A child process that measures one integrated loudness (ITU-R BS.1770, pyloudnorm).

    Started at once: the child imports pyloudnorm and SciPy while the caller gets its samples
    ready. `measure` is called once; `close` ends a child that was never asked.
    """

    def __init__(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=_IMPORT_ROOT,
        )

    def measure(self, samples: np.ndarray, sample_rate: int) -> float:
        """Integrated loudness of mono float samples in LUFS (at least 0.4 s of audio)."""
        data = np.asarray(samples, dtype="<f8").reshape(-1).tobytes()
        try:
            out, err = self._child.communicate(f"{sample_rate}\n".encode() + data, timeout=METER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.close()
            raise RuntimeError("the loudness meter did not answer") from None
        if self._child.returncode != 0:
            raise RuntimeError(f"the loudness meter failed: {err.decode(errors='replace').strip()}")
        return float(out)

    def close(self) -> None:
        if self._child.poll() is None:
            self._child.kill()
            self._child.communicate()


def integrated_lufs(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness of mono float samples in LUFS, measured in a child process."""
    return LoudnessMeter().measure(samples, sample_rate)


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


if __name__ == "__main__":  # the child: the rate on stdin's first line, then float64 samples
    import pyloudnorm  # noqa: F401  (now, while the parent is still making the samples)

    rate = int(sys.stdin.buffer.readline())
    print(repr(_measure(rate, sys.stdin.buffer.read())))
