"""Windowed synthesis: a sentence encoded once, then its audio made window by window.

The stock Piper graph is split at load (see `graph.split`) into an encoder (ids -> z_p, frame
mask, per-id frame counts), the reverse flow (z_p -> z) and the HiFi-GAN decoder (z -> samples,
`hop` per frame). Flow and decoder are stacks of convolutions over frames: a window of frames
computed with `margin` frames of context on each side equals the same frames of the whole
utterance up to float rounding, and the margins that make it so are measured at load
(`find_margins`) rather than assumed, so any Piper export that splits is checked before use.

The encoder draws all of a sentence's noise (durations and latents), so with the noise on the
windows of one encoded sentence are deterministic: a stream and the file made from it hold the
same bytes. First audio costs the encoder plus one small flow and one small decoder window,
not the whole sentence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import onnxruntime as ort
from loguru import logger

from server.synthesis.graph import Parts

# The largest sample difference (samples in [-1, 1]) that windowed synthesis may show against
# the same sentence synthesized in one piece; above it a voice is not windowed.
WINDOW_TOLERANCE: Final = 1e-4
# Margins tried at load, smallest first (frames of context on each side of a window). The flow's
# start at 24: on the bundled voice 16 passed the warm-up sentence but gave 1.5e-4 on another,
# where 24 gave 1.2e-5; one sentence cannot show every case, so the search starts at a margin
# with room to spare.
DECODER_MARGINS: Final = (8, 12, 16, 24, 32)
FLOW_MARGINS: Final = (24, 32, 48, 64)
# Each stage gets part of the budget, so that the two errors together stay within it, on other
# sentences too (the search sees one).
DECODER_SHARE: Final = 0.1
FLOW_SHARE: Final = 0.3


@dataclass(frozen=True)
class Encoded:
    """One sentence after the encoder: everything its windows need, noise already drawn."""

    ids: tuple[int, ...]
    z_p: np.ndarray  # [channels, frames] float32
    durations: np.ndarray  # frames per id (the duration Ceil), int64
    speaker_id: int | None

    @property
    def frames(self) -> int:
        return int(self.z_p.shape[1])


@dataclass(frozen=True)
class Window:
    """Frames [start, end) of an encoded sentence, to be made into samples."""

    encoded: Encoded
    start: int
    end: int

    def spans(self, flow_margin: int, decoder_margin: int) -> tuple[int, int, int, int]:
        """The flow's input span and the decoder's input span, in the sentence's frames."""
        frames = self.encoded.frames
        dec_start = max(0, self.start - decoder_margin)
        dec_end = min(frames, self.end + decoder_margin)
        flow_start = max(0, dec_start - flow_margin)
        flow_end = min(frames, dec_end + flow_margin)
        return flow_start, flow_end, dec_start, dec_end


def window_bounds(frames: int, first: int, size: int) -> list[tuple[int, int]]:
    """[start, end) frames: a small first window (fast first audio), then `size` each."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < frames:
        end = min(frames, start + (first if not bounds else size))
        if frames - end < size // 4:  # a sliver at the end costs a call for little audio
            end = frames
        bounds.append((start, end))
        start = end
    return bounds


class WindowedEngine:
    """The three parts of one voice, each one onnxruntime session (one copy per process)."""

    def __init__(self, parts: Parts, make_session: Any, pad_id: int) -> None:
        self.encoder: ort.InferenceSession = make_session(parts.encoder)
        self.flow: ort.InferenceSession = make_session(parts.flow)
        self.decoder: ort.InferenceSession = make_session(parts.decoder)
        self._speaker_input = parts.speaker_input
        self._pad_id = pad_id
        self._encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        self._flow_inputs = [i.name for i in self.flow.get_inputs()]
        self._decoder_inputs = [i.name for i in self.decoder.get_inputs()]
        self.hop = 0  # samples per frame, measured by `calibrate`
        self.flow_margin = 0
        self.decoder_margin = 0
        # Seconds of compute per frame, window by window, as timed while the margins were checked:
        # the scheduler's first estimate before any stream has run.
        self.frame_compute_s = 0.0

    def encode(
        self,
        rows: Sequence[Sequence[int]],
        scales: tuple[float, float, float],
        speaker_ids: Sequence[int | None],
    ) -> list[Encoded]:
        """One encoder call for several rows (noise_scale, length_scale, noise_w as Piper orders them)."""
        longest = max(len(row) for row in rows)
        ids = np.full((len(rows), longest), self._pad_id, dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
        inputs: dict[str, Any] = {
            "input": ids,
            "input_lengths": np.array([len(row) for row in rows], dtype=np.int64),
            "scales": np.array(scales, dtype=np.float32),
        }
        if self._speaker_input and speaker_ids[0] is not None:
            inputs[self._speaker_input] = np.array(speaker_ids, dtype=np.int64)
        z_p, _mask, durations, lengths = self.encoder.run(self._encoder_outputs, inputs)
        frames = np.rint(lengths).astype(np.int64).reshape(-1)
        return [
            Encoded(
                tuple(row),
                np.ascontiguousarray(z_p[index, :, : frames[index]]),
                np.rint(durations[index, 0, : len(row)]).astype(np.int64),
                speaker_ids[index],
            )
            for index, row in enumerate(rows)
        ]

    def calibrate(self, encoded: Encoded) -> None:
        """Measure the decoder's samples per frame on one sentence."""
        samples = self._decode(self._flow(encoded.z_p[None], [encoded.speaker_id]), [encoded.speaker_id])
        self.hop = samples.shape[-1] // encoded.frames

    def whole(self, encoded: Sequence[Encoded]) -> list[np.ndarray]:
        """Flow and decoder over every frame at once: the one-shot synthesis, for files and checks."""
        longest = max(e.frames for e in encoded)
        z_p = np.zeros((len(encoded), encoded[0].z_p.shape[0], longest), dtype=np.float32)
        mask = np.zeros((len(encoded), 1, longest), dtype=np.float32)
        for index, e in enumerate(encoded):
            z_p[index, :, : e.frames] = e.z_p
            mask[index, :, : e.frames] = 1.0
        speakers = [e.speaker_id for e in encoded]
        samples = self._decode(self._flow(z_p, speakers, mask), speakers).reshape(len(encoded), -1)
        return [samples[index, : e.frames * self.hop] for index, e in enumerate(encoded)]

    def render(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Samples for each window; windows of equal spans run as one batch (the GPU path)."""
        spans = [w.spans(self.flow_margin, self.decoder_margin) for w in windows]
        flow_len = spans[0][1] - spans[0][0]
        dec_len = spans[0][3] - spans[0][2]
        if any(s[1] - s[0] != flow_len or s[3] - s[2] != dec_len for s in spans):
            raise ValueError("windows of one batch must have equal spans")
        speakers = [w.encoded.speaker_id for w in windows]
        z_p = np.stack([w.encoded.z_p[:, s[0] : s[1]] for w, s in zip(windows, spans, strict=True)])
        z = self._flow(z_p, speakers)
        z_dec = np.stack([z[i, :, s[2] - s[0] : s[3] - s[0]] for i, s in enumerate(spans)])
        samples = self._decode(z_dec, speakers).reshape(len(windows), -1)
        hop = self.hop
        return [
            samples[i, (w.start - s[2]) * hop : (w.end - s[2]) * hop]
            for i, (w, s) in enumerate(zip(windows, spans, strict=True))
        ]

    def _flow(
        self, z_p: np.ndarray, speakers: Sequence[int | None], mask: np.ndarray | None = None
    ) -> np.ndarray:
        if mask is None:
            mask = np.ones((z_p.shape[0], 1, z_p.shape[2]), dtype=np.float32)
        inputs: dict[str, Any] = {self._flow_inputs[0]: z_p, self._flow_inputs[1]: mask}
        if len(self._flow_inputs) > 2:
            inputs[self._flow_inputs[2]] = np.array(speakers, dtype=np.int64)
        return self.flow.run(None, inputs)[0]

    def _decode(self, z: np.ndarray, speakers: Sequence[int | None]) -> np.ndarray:
        inputs: dict[str, Any] = {self._decoder_inputs[0]: z}
        if len(self._decoder_inputs) > 1:
            inputs[self._decoder_inputs[1]] = np.array(speakers, dtype=np.int64)
        return self.decoder.run(None, inputs)[0]


def windowed(engine: WindowedEngine, encoded: Encoded, first: int, size: int) -> np.ndarray:
    """A sentence's samples made window by window, joined (what a stream plays)."""
    bounds = window_bounds(encoded.frames, first, size)
    return np.concatenate([engine.render([Window(encoded, s, e)])[0] for s, e in bounds])


def _decoded_from_exact_z(engine: WindowedEngine, encoded: Encoded, first: int, size: int) -> np.ndarray:
    """Windows decoded from the whole utterance's z: the decoder's own error, without the flow's."""
    speakers = [encoded.speaker_id]
    z = engine._flow(encoded.z_p[None], speakers)
    pieces = []
    for start, end in window_bounds(encoded.frames, first, size):
        _, _, dec_start, dec_end = Window(encoded, start, end).spans(0, engine.decoder_margin)
        samples = engine._decode(z[:, :, dec_start:dec_end], speakers).reshape(-1)
        pieces.append(samples[(start - dec_start) * engine.hop : (end - dec_start) * engine.hop])
    return np.concatenate(pieces)


def find_margins(
    engine: WindowedEngine,
    encoded: Encoded,
    first: int,
    size: int,
    voice_id: str,
    fixed: tuple[int, int] = (0, 0),
) -> tuple[int, int] | None:
    """The smallest (flow, decoder) margins whose windows match one-shot output; None if none do.

    `encoded` must come from the encoder with the noise off, so the comparison is exact. The
    decoder's margin is searched on the exact z of the whole utterance, then the flow's on the
    full windowed path. A margin given in `fixed` (non-zero) is not searched, only checked.
    """
    (whole,) = engine.whole([encoded])

    def difference(samples: np.ndarray) -> float:
        return float(np.abs(samples - whole).max())

    flow_fixed, decoder_fixed = fixed
    for margin in (decoder_fixed,) if decoder_fixed else DECODER_MARGINS:
        engine.decoder_margin = margin
        if (
            difference(_decoded_from_exact_z(engine, encoded, first, size))
            <= DECODER_SHARE * WINDOW_TOLERANCE
        ):
            break
    else:
        if not decoder_fixed:
            logger.warning("{}: no decoder margin up to {} frames matches one-shot", voice_id, margin)
            return None
    largest = 0.0
    for margin in (flow_fixed,) if flow_fixed else FLOW_MARGINS:
        engine.flow_margin = margin
        started = time.perf_counter()
        largest = difference(windowed(engine, encoded, first, size))
        engine.frame_compute_s = (time.perf_counter() - started) / max(1, encoded.frames)
        if largest <= FLOW_SHARE * WINDOW_TOLERANCE:
            break
    if largest > WINDOW_TOLERANCE or not (fixed[0] or largest <= FLOW_SHARE * WINDOW_TOLERANCE):
        logger.warning(
            "{}: windows differ from one-shot by {:.1e} (flow margin {}, decoder {}), so not windowed",
            voice_id,
            largest,
            engine.flow_margin,
            engine.decoder_margin,
        )
        return None
    logger.info(
        "{}: window margins flow {} decoder {} frames (largest difference {:.1e})",
        voice_id,
        engine.flow_margin,
        engine.decoder_margin,
        largest,
    )
    return engine.flow_margin, engine.decoder_margin
