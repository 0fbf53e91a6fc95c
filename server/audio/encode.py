"""Streaming encoders: s16le PCM chunks in, encoded bytes out as soon as the codec has them.

An `Encoder` is fed the PCM chunks as the scheduler delivers them and returns the packets that are
ready at once (muxed into the format's container), so a compressed stream starts with the first
synthesized chunk instead of after the whole text; `finish()` flushes the codec's tail so no audio
is lost. Everything goes through PyAV (FFmpeg's libraries); resampling, when a format or a client
needs another rate, uses FFmpeg's resampler, never our own arithmetic.

Input is always cut into the codec's own frame size before it reaches the codec, so the bytes do
not depend on how the PCM was chunked: a live stream and a file encoded from the cached WAV are the
same bytes for every format whose `stream_is_file` is true. Calls are blocking (tens of
microseconds to a few milliseconds a chunk): callers run them on an executor, one call at a time
per encoder. PyAV is imported by the first encoder that needs a codec or the resampler, not with
this module (importing this module stays cheap); a worker calls `warm_up` before it reports
ready, so its first compressed stream does not pay for loading FFmpeg and opening the codecs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from server.audio.formats import FORMATS, RESAMPLED_RATES, WAV, AudioFormat
from server.audio.pcm import SAMPLE_WIDTH, wav_header

if TYPE_CHECKING:
    import av

LAYOUT: Final = "mono"
# The sample format each encoder takes (PyAV names); PCM and WAV leave resampling at s16.
SAMPLE_FORMATS: Final = {"libmp3lame": "s16p", "libopus": "s16", "aac": "fltp", "flac": "s16"}

# Ogg pages close after a second of audio by default, so a stream's first audio would wait that
# long; 100 ms pages cost about 5% of a 32 kbit/s stream in page headers.
MUXER_OPTIONS: Final = {"ogg": {"page_duration": "100000"}}
# Encoder effort: libopus at complexity 5 and FFmpeg's fast AAC coder take about half the time of
# their defaults for a few percent more bytes, which speech at these bitrates does not hear.
# LAME at quality 7 (FFmpeg's default is LAME's 3) encodes about three times faster at the same
# constant bitrate; on the bundled voice its decoded waveform is as close to the source (25 dB
# SNR against 24 dB), because the psychoacoustic shaping it skips pays off for music, not speech.
CODEC_OPTIONS: Final = {
    "libopus": {"compression_level": "5"},
    "aac": {"aac_coder": "fast"},
    "libmp3lame": {"compression_level": "7"},
}


@dataclass(frozen=True)
class Bitrates:
    """Target bitrates in bits per second for the lossy codecs (speech needs far less than music)."""

    mp3: int = 64_000
    opus: int = 32_000
    aac: int = 64_000

    def of(self, audio_format: AudioFormat) -> int | None:
        return getattr(self, audio_format.name, None)


class _Sink:
    """An unseekable file for the muxer: written bytes collect until the encoder drains them.

    Unseekable on purpose: a muxer that could seek would go back at the end and rewrite a header
    the client already has.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def flush(self) -> None:
        """Nothing to do: the bytes are drained by the encoder."""

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class Encoder:
    """One output stream of one format; feed it with `encode()`, end it with `finish()`.

    `out_rate` asks for another sample rate than the input's (OpenAI's `pcm` is 24 kHz); a format
    that needs its own rate (Opus) takes that one. `whole_file` makes the finished bytes a complete
    file where the format can say more once the length is known (WAV sizes, FLAC STREAMINFO);
    such an encoder returns everything from `finish()`.
    """

    def __init__(
        self,
        audio_format: AudioFormat,
        in_rate: int,
        out_rate: int | None = None,
        *,
        bitrates: Bitrates | None = None,
        whole_file: bool = False,
    ) -> None:
        self.format = audio_format
        self.in_rate = in_rate
        self.rate = audio_format.rate or out_rate or in_rate
        self._whole_file = whole_file and not audio_format.stream_is_file
        self._finished = False
        self._pending: list[bytes] = []  # a whole WAV waits for its size
        self._samples = 0  # samples given to the codec so far: the next frame's pts
        self._container: Any = None
        self._stream: Any = None
        self._resampler: av.AudioResampler | None = None
        self._sink: _Sink | io.BytesIO = io.BytesIO() if self._whole_file else _Sink()
        self._bitrate = (bitrates or Bitrates()).of(audio_format)
        self._header_sent = False

    # -- public interface ------------------------------------------------------------------

    def encode(self, pcm: bytes) -> bytes:
        """Take a chunk of s16le mono PCM at `in_rate`; return the bytes that are ready now."""
        if self._finished:
            raise RuntimeError("encoder already finished")
        if self.format.codec is None:
            return self._raw(self._pcm_out(pcm))
        if self._container is None:
            self._open()
        for frame in self._frames(pcm):
            self._mux(frame)
        return self._drain()

    def finish(self) -> bytes:
        """Flush the resampler and codec tails and close the container; return the last bytes."""
        if self._finished:
            return b""
        if self.format.codec is None:
            tail = self._raw(self._pcm_out(None))
            self._finished = True
            if self._whole_file:
                pcm = b"".join(self._pending)
                return wav_header(self.rate, len(pcm)) + pcm
            return tail
        if self._container is None:
            self._open()  # no audio at all: still a valid, empty file
        for frame in self._frames(None):
            self._mux(frame)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._finished = True
        if isinstance(self._sink, io.BytesIO):
            return self._sink.getvalue()
        return self._sink.drain()

    def close(self) -> None:
        """Release FFmpeg's objects without flushing (the client went away)."""
        if self._container is not None and not self._finished:
            import av

            # A half-written container may not close cleanly; it is dropped either way.
            with contextlib.suppress(av.FFmpegError, OSError, ValueError):
                self._container.close()
        self._finished = True

    # -- internals -------------------------------------------------------------------------

    def _open(self) -> None:
        import av

        codec = self.format.codec
        assert codec is not None and self.format.container is not None
        options = {"fflags": "+bitexact", **MUXER_OPTIONS.get(self.format.container, {})}
        self._container = av.open(self._sink, mode="w", format=self.format.container, options=options)
        stream = self._container.add_stream(
            codec, rate=self.rate, layout=LAYOUT, options=CODEC_OPTIONS.get(codec, {})
        )
        stream.format = SAMPLE_FORMATS[codec]
        if self._bitrate:
            stream.bit_rate = self._bitrate
        stream.time_base = Fraction(1, self.rate)
        self._container.start_encoding()
        self._stream = stream
        frame_size = stream.codec_context.frame_size or None
        self._resampler = av.AudioResampler(
            format=SAMPLE_FORMATS[codec], layout=LAYOUT, rate=self.rate, frame_size=frame_size
        )

    def _frames(self, pcm: bytes | None) -> list[av.AudioFrame]:
        """Frames of the codec's size and rate; `None` flushes what the resampler holds."""
        assert self._resampler is not None
        if pcm is None:
            return list(self._resampler.resample(None))
        return list(self._resampler.resample(_frame(pcm, self.in_rate))) if pcm else []

    def _pcm_out(self, pcm: bytes | None) -> bytes:
        """PCM at the output rate: as given, or through FFmpeg's resampler."""
        if self.rate == self.in_rate:
            return pcm or b""
        if self._resampler is None:
            import av

            self._resampler = av.AudioResampler(format="s16", layout=LAYOUT, rate=self.rate)
        return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in self._frames(pcm))

    def _raw(self, data: bytes) -> bytes:
        if self._whole_file:
            self._pending.append(data)
            return b""
        if self.format is WAV and not self._header_sent:
            self._header_sent = True
            return wav_header(self.rate, None) + data
        return data

    def _mux(self, frame: av.AudioFrame) -> None:
        frame.pts = self._samples
        frame.time_base = Fraction(1, self.rate)
        self._samples += frame.samples
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _drain(self) -> bytes:
        if isinstance(self._sink, io.BytesIO):
            return b""  # a whole file is only complete at the end
        return self._sink.drain()


def warm_up(in_rates: Iterable[int], bitrates: Bitrates | None = None) -> None:
    """Encode a tenth of a second of silence into every encoded format, from each voice rate.

    A worker's first mp3 stream measured 130 to 215 ms to first audio against about 70 ms for the
    next ones: importing PyAV, loading FFmpeg's libraries and opening a codec for the first time
    (about 15 MiB resident, which every worker that encodes carries anyway).
    """
    for rate in sorted(set(in_rates)):
        silence = bytes(SAMPLE_WIDTH * rate // 10)
        for audio_format in FORMATS.values():
            out_rates = [None] if audio_format.codec else [r for r in RESAMPLED_RATES if r != rate]
            for out_rate in out_rates:
                encoder = Encoder(audio_format, rate, out_rate, bitrates=bitrates)
                encoder.encode(silence)
                encoder.finish()


def _frame(pcm: bytes, rate: int) -> av.AudioFrame:
    import av

    samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=LAYOUT)
    frame.sample_rate = rate
    return frame


def encode_file(
    audio_format: AudioFormat,
    pcm: bytes,
    in_rate: int,
    out_rate: int | None = None,
    *,
    bitrates: Bitrates | None = None,
) -> bytes:
    """A whole file of `audio_format` from finished PCM (what `/audio/{hash}.{ext}` serves)."""
    encoder = Encoder(audio_format, in_rate, out_rate, bitrates=bitrates, whole_file=True)
    return encoder.encode(pcm) + encoder.finish()
