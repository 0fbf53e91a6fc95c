"""Every format of a key's audio: found in the tiers, or encoded once from its WAV and kept beside it.

`SpeechService` makes the WAV (single-flight synthesis, the tiers, limits); this service turns it
into what the client asked for. The audio key never contains the format: the tiers hold
`{key}.wav` and, beside it, one entry per rendition (`{key}.mp3`, `{key}.opus`, `{key}.24000.pcm`).
So a repeat of a format is a plain hit (never re-encoded) and a new format for text already
synthesized is encoded from the cached WAV (never re-synthesized).

Streams encode chunk by chunk as the PCM arrives. When a live stream completes and its bytes are
what a file would be (`AudioFormat.stream_is_file`), they are stored as that rendition, so the
URL or the next request finds them. Encoding runs on a small thread pool, never on the IOLoop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from server.audio.encode import Bitrates, Encoder, encode_file, warm_up
from server.audio.formats import WAV, Rendition, rendition_suffixes
from server.audio.pcm import duration_s, parse_wav
from server.cache.keys import is_key
from server.cache.tiers import MISS, WAV_SUFFIX, TieredCache
from server.errors import NotFound
from server.metrics import Metrics
from server.request import SpeechRequest
from server.settings import AudioSettings
from server.speech import Audio, SpeechService, Stream

CACHED_SLICE_BYTES: Final = 64 * 1024  # stored renditions are written in slices so flushes pace them
SUFFIXES: Final = rendition_suffixes()
T = TypeVar("T")


@dataclass(frozen=True)
class RenderedAudio:
    """A key's audio in one rendition, with what `/tts` reports about it."""

    key: str
    data: bytes
    tier: str  # the rendition's tier on a hit; the WAV's when it was encoded now (miss: synthesized)
    rendition: Rendition
    sample_rate: int
    duration_s: float | None  # known when the WAV was at hand


def bitrates(settings: AudioSettings) -> Bitrates:
    return Bitrates(
        mp3=settings.mp3_bitrate_kbps * 1000,
        opus=settings.opus_bitrate_kbps * 1000,
        aac=settings.aac_bitrate_kbps * 1000,
    )


def _encoded(rendition: Rendition) -> bool:
    """Whether a rendition needs an encoder (and a stored copy); PCM and WAV at the voice's rate
    are the synthesized samples with at most a header."""
    return rendition.format.codec is not None or rendition.rate is not None


class Renditions:
    def __init__(
        self, speech: SpeechService, cache: TieredCache, metrics: Metrics, settings: AudioSettings
    ) -> None:
        self._speech = speech
        self._cache = cache
        self._metrics = metrics
        self._bitrates = bitrates(settings)
        self._pool = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="encode")
        self._encodes: dict[str, asyncio.Future[bytes]] = {}  # single-flight per entry
        self._background: set[asyncio.Task[None]] = set()

    # -- whole files -------------------------------------------------------------------------

    async def file(self, request: SpeechRequest, rendition: Rendition, client: str = "") -> RenderedAudio:
        """The audio for `/tts`, stored where a URL reaches it, with its rate and duration."""
        audio = await self._speech.synthesize(request, client)
        found = await self._from_wav(audio, rendition)
        voice_rate, pcm = parse_wav(audio.wav)  # one parse for both figures (on every /tts hit)
        seconds = duration_s(voice_rate, len(pcm))
        return RenderedAudio(
            found.key, found.data, found.tier, rendition, rendition.sample_rate(voice_rate), seconds
        )

    def entries(self, key: str, rendition: Rendition) -> list[tuple[str, str]]:
        """The `(key, suffix)` cache entries a rendition is made from: the WAV, then the encoded copy."""
        entries = [(key, WAV_SUFFIX)]
        if _encoded(rendition):
            entries.append((key, rendition.suffix))
        return entries

    async def stored(self, key: str, rendition: Rendition) -> RenderedAudio:
        """A stored rendition by key (for `/audio/{key}.{ext}`): a hit, or encoded from its WAV."""
        if not is_key(key):
            raise NotFound("no such audio")
        if _encoded(rendition):
            hit = await self._cache.get(key, rendition.suffix)
            if hit is not None:
                return RenderedAudio(key, hit.data, hit.tier, rendition, 0, None)
        return await self._from_wav(await self._speech.audio(key), rendition)

    async def _from_wav(self, audio: Audio, rendition: Rendition) -> RenderedAudio:
        if rendition.format is WAV and not _encoded(rendition):
            # The hot path of /audio hits: the stored bytes as they are, nothing parsed.
            return RenderedAudio(audio.key, audio.wav, audio.tier, rendition, 0, None)
        rate = rendition.sample_rate(audio.sample_rate)
        if not _encoded(rendition):
            pcm = bytes(parse_wav(audio.wav)[1])
            return RenderedAudio(audio.key, pcm, audio.tier, rendition, rate, audio.duration_s)
        hit = await self._cache.get(audio.key, rendition.suffix)
        if hit is not None:
            self._cache.keep_alive(audio.key, hit.data, rendition.suffix)
            return RenderedAudio(audio.key, hit.data, hit.tier, rendition, rate, audio.duration_s)
        data = await self._encode_once(audio, rendition)
        return RenderedAudio(audio.key, data, audio.tier, rendition, rate, audio.duration_s)

    async def _encode_once(self, audio: Audio, rendition: Rendition) -> bytes:
        """Encode a WAV into a rendition and store it; concurrent requests share one encode."""
        name = f"{audio.key}.{rendition.suffix}"
        pending = self._encodes.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._encodes[name] = future
        try:
            rate, pcm = parse_wav(audio.wav)
            self._metrics.encodes.labels(rendition.format.name).inc()
            data = await self._run(
                rendition.format.name,
                encode_file,
                rendition.format,
                bytes(pcm),
                rate,
                rendition.rate,
                bitrates=self._bitrates,
            )
            await self._cache.put(audio.key, data, rendition.suffix)
            future.set_result(data)
            return data
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so nobody waiting is not an unhandled error
            raise
        finally:
            del self._encodes[name]

    # -- streams -----------------------------------------------------------------------------

    async def stream(self, request: SpeechRequest, rendition: Rendition, client: str = "") -> EncodedStream:
        """A stream of the rendition: stored bytes, or the speech stream encoded as it arrives."""
        stream = await self._speech.stream(request, client)
        stored = None
        if stream.tier != MISS and _encoded(rendition):
            hit = await self._cache.get(stream.key, rendition.suffix)
            stored = None if hit is None else hit.data
        return EncodedStream(self, stream, rendition, stored)

    async def warm_up(self) -> None:
        """Once, before the worker reports ready: every encoder opened once, in the encoders' pool."""
        rates = {voice.sample_rate for voice in self._speech.catalog.voices()}
        await asyncio.get_running_loop().run_in_executor(self._pool, warm_up, rates, self._bitrates)

    def _encoder(self, rendition: Rendition, in_rate: int) -> Encoder:
        self._metrics.encodes.labels(rendition.format.name).inc()
        return Encoder(rendition.format, in_rate, rendition.rate, bitrates=self._bitrates)

    async def _run(self, label: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._metrics.encode_seconds.labels(label).inc(time.perf_counter() - started)

        return await asyncio.get_running_loop().run_in_executor(self._pool, timed)

    def _keep(self, key: str, data: bytes, rendition: Rendition) -> None:
        """Store a finished stream's bytes as its rendition, after the response is done."""
        task = asyncio.ensure_future(self._cache.put(key, data, rendition.suffix))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)


class EncodedStream:
    """What a streaming handler needs: the rendition's rate and content type, then its bytes."""

    def __init__(self, owner: Renditions, stream: Stream, rendition: Rendition, stored: bytes | None) -> None:
        self._owner = owner
        self._stream = stream
        self._stored = stored
        self.rendition = rendition
        self.key = stream.key
        self.tier = stream.tier
        self.voice_rate = stream.sample_rate
        self.sample_rate = rendition.sample_rate(stream.sample_rate)
        self._inflight: asyncio.Future[Any] | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._stored is not None:
            for start in range(0, len(self._stored), CACHED_SLICE_BYTES):
                yield self._stored[start : start + CACHED_SLICE_BYTES]
            return
        if not _encoded(self.rendition):
            encoder = Encoder(self.rendition.format, self.voice_rate)  # framing only: inline
            async for pcm in self._stream.chunks():
                yield encoder.encode(pcm)
            return
        encoder = self._owner._encoder(self.rendition, self.voice_rate)
        storable = self.rendition.format.stream_is_file
        parts: list[bytes] = []
        try:
            async for pcm in self._stream.chunks():
                data = await self._call(encoder.encode, pcm)
                if storable:
                    parts.append(data)
                if data:
                    yield data
            tail = await self._call(encoder.finish)
            if storable:
                parts.append(tail)
                self._owner._keep(self.key, b"".join(parts), self.rendition)
            if tail:
                yield tail
        finally:
            self._release(encoder)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        name = self.rendition.format.name
        self._inflight = asyncio.ensure_future(self._owner._run(name, fn, *args))
        try:
            return await asyncio.shield(self._inflight)
        finally:
            if self._inflight.done():
                self._inflight = None

    def _release(self, encoder: Encoder) -> None:
        """Close the encoder once no call of it is running (a cancelled await leaves one behind)."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.add_done_callback(lambda _: encoder.close())
        else:
            encoder.close()

    async def load_words(self) -> None:
        await self._stream.load_words()

    def words(self) -> list[dict[str, Any]]:
        """Word timings known so far: never later than the audio they describe."""
        return self._stream.words()

    def close(self) -> None:
        """The client is done (or gone): stop a synthesis nobody else is waiting for."""
        self._stream.close()
