"""SpeechService: a parsed request in, cached or freshly synthesized audio out.

Every miss becomes one `Flight`: a synthesis shared by all concurrent requests for the same key
(single-flight). A flight phonemizes the text, plans chunks, and runs them one by one through the
scheduler, which may run a chunk in one batch with other flights' chunks of the same voice and
speed; subscribers (streams and `/tts` calls) read its chunks as they arrive. When it
completes, the WAV goes into the cache tiers; when its last stream goes away first, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Final

from loguru import logger

from server.cache.keys import KeyParts, audio_key, is_key
from server.cache.tiers import MISS, TieredCache
from server.errors import (
    InvalidRequest,
    NotFound,
    NotReady,
    RateLimited,
    StorageUnavailable,
    SynthesisFailed,
    TTSError,
)
from server.metrics import Metrics
from server.ratelimit import SYNTHESIS, RateLimiter
from server.request import SpeechRequest
from server.settings import SynthesisSettings
from server.synthesis.audio import duration_s, parse_wav, silence, to_pcm16, wav_bytes
from server.synthesis.catalog import VoiceCatalog
from server.synthesis.scheduler import Admission, Scheduler
from server.synthesis.text import Chunk, plan_chunks
from server.synthesis.voice import Voice

CACHED_SLICE_BYTES: Final = 64 * 1024  # a cached stream is written in slices so flushes pace it
LOCK_POLL_S: Final = 0.05
STARTUP_WAIT_S: Final = 30.0


@dataclass(frozen=True)
class _Part:
    """One chunk of one flight, as it travels through a (perhaps shared) inference call."""

    chunk: Chunk
    speaker_id: int | None
    last: bool


@dataclass(frozen=True)
class Audio:
    """A finished WAV and the tier it came from."""

    key: str
    wav: bytes
    tier: str

    @property
    def sample_rate(self) -> int:
        return parse_wav(self.wav)[0]

    @property
    def duration_s(self) -> float:
        rate, pcm = parse_wav(self.wav)
        return duration_s(rate, len(pcm))


class Flight:
    """One synthesis in progress and the chunks it has produced so far."""

    def __init__(self, key: str, sample_rate: int, created: float) -> None:
        self.key = key
        self.sample_rate = sample_rate
        self.created = created
        self.chunks: list[bytes] = []
        self.finished = False
        self.error: TTSError | None = None
        self.wav = b""
        self.stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.subscribers = 0
        self.consumed = 0  # most chunks any subscriber has taken: paces the producer
        self.unbounded = False  # a /tts caller wants it all: no pacing
        self.abandoned = False  # every subscriber left before it finished
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def append(self, pcm: bytes) -> None:
        self.chunks.append(pcm)
        self._notify()

    def finish(self, wav: bytes) -> None:
        self.wav, self.finished = wav, True
        self._notify()

    def fail(self, error: TTSError) -> None:
        self.error = error
        if not self.stored.done():
            self.stored.set_result(False)
        self._notify()

    def abandon(self) -> None:
        self.abandoned = True
        self._notify()

    def took(self, count: int) -> None:
        if count > self.consumed:
            self.consumed = count
            self._notify()

    async def room_for(self, index: int, lookahead: int) -> None:
        """Wait until producing chunk `index` keeps within `lookahead` of the fastest reader."""
        while not self.unbounded and not self.abandoned and index - self.consumed >= lookahead:
            await self.changed()

    async def read(self) -> AsyncIterator[bytes]:
        index = 0
        while True:
            while index < len(self.chunks):
                chunk = self.chunks[index]
                index += 1
                self.took(index)
                yield chunk
            if self.error is not None:
                raise self.error
            if self.finished:
                return
            await self.changed()


class Stream:
    """What a `/tts/stream` handler needs: the format up front, then PCM chunks."""

    def __init__(
        self,
        service: SpeechService,
        key: str,
        sample_rate: int,
        tier: str,
        *,
        cached: bytes | None = None,
        flight: Flight | None = None,
    ) -> None:
        self._service = service
        self.key = key
        self.sample_rate = sample_rate
        self.tier = tier
        self._cached = cached
        self._flight = flight

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._cached is not None:
            pcm = parse_wav(self._cached)[1]
            for start in range(0, len(pcm), CACHED_SLICE_BYTES):
                yield bytes(pcm[start : start + CACHED_SLICE_BYTES])
            return
        assert self._flight is not None
        async for chunk in self._flight.read():
            yield chunk

    def close(self) -> None:
        """The client is done (or gone): stop a synthesis nobody else is waiting for."""
        if self._flight is not None:
            self._service.unsubscribe(self._flight)
            self._flight = None


class SpeechService:
    def __init__(
        self,
        settings: SynthesisSettings,
        catalog: VoiceCatalog,
        cache: TieredCache,
        scheduler: Scheduler,
        metrics: Metrics,
        limiter: RateLimiter,
        *,
        lock_ttl_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._lock_ttl_s = lock_ttl_s
        self.catalog = catalog
        self.cache = cache
        self.scheduler = scheduler
        self._metrics = metrics
        self._flights: dict[str, Flight] = {}
        self._loaded = asyncio.Event()
        # espeak is serialized anyway; its own thread keeps phonemizing from queueing behind
        # inference, which would delay every new request's first chunk.
        self._text_pool = ThreadPoolExecutor(1, thread_name_prefix="phonemize")

    @property
    def flights(self) -> int:
        return len(self._flights)

    def _render_params(self) -> tuple[float, ...]:
        s = self._settings
        return (s.gain, s.sentence_silence_s, s.fade_ms, s.first_chunk_max_phonemes, s.chunk_max_phonemes)

    def loaded(self) -> None:
        """Voice loading ended (ready or not): requests waiting for it go on."""
        self._loaded.set()

    async def _until_ready(self) -> None:
        # A worker that gunicorn just (re)started shares the listening socket with ready ones,
        # so it may get requests while its voices load (about a second): hold them briefly
        # rather than fail them.
        if not self.catalog.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), STARTUP_WAIT_S)
        if not self.catalog.ready:
            raise NotReady(self.catalog.problem or "voices are still loading", retry_after_s=2)

    async def _resolve(self, request: SpeechRequest) -> tuple[Voice, int | None, str]:
        await self._until_ready()
        voice = self.catalog.get(request.voice)
        try:
            speaker_id = voice.speaker_id(request.speaker)
        except KeyError:
            raise InvalidRequest(f"unknown speaker {request.speaker!r} for voice {voice.voice_id}") from None
        key = audio_key(
            KeyParts(
                voice.voice_id,
                voice.digest,
                speaker_id,
                request.text,
                request.length_scale,
                voice.noise_scale,
                voice.noise_w,
                self._render_params(),
            )
        )
        return voice, speaker_id, key

    async def _lookup(self, key: str):
        hit = await self.cache.get(key)
        if hit is None:
            self._metrics.cache_misses.inc()
        else:
            self._metrics.cache_hits.labels(hit.tier).inc()
        return hit

    async def synthesize(self, request: SpeechRequest, client: str = "") -> Audio:
        """The whole WAV, stored where a URL can reach it (for `/tts`)."""
        voice, speaker_id, key = await self._resolve(request)
        hit = await self._lookup(key)
        if hit is not None:
            self.cache.keep_alive(key, hit.wav)
            return Audio(key, hit.wav, hit.tier)
        await self._charge(key, client, len(request.text))
        flight = self._join(key, request, voice, speaker_id)
        flight.unbounded = True
        flight.took(len(flight.chunks))
        flight.subscribers += 1
        try:
            durable = await asyncio.shield(flight.stored)
        finally:
            flight.subscribers -= 1
        if flight.error is not None:
            raise flight.error
        if not durable:
            raise StorageUnavailable(
                "audio storage is unavailable; use /tts/stream or retry", retry_after_s=5
            )
        return Audio(key, flight.wav, MISS)

    async def stream(self, request: SpeechRequest, client: str = "") -> Stream:
        """A stream of PCM for `/tts/stream`: cached bytes at once, or a live flight."""
        voice, speaker_id, key = await self._resolve(request)
        hit = await self._lookup(key)
        if hit is not None:
            return Stream(self, key, voice.sample_rate, hit.tier, cached=hit.wav)
        await self._charge(key, client, len(request.text))
        flight = self._join(key, request, voice, speaker_id)
        flight.subscribers += 1
        return Stream(self, key, voice.sample_rate, MISS, flight=flight)

    async def audio(self, key: str) -> Audio:
        """A stored WAV by key (for `/audio/{key}.wav`)."""
        if not is_key(key):
            raise NotFound("no such audio")
        hit = await self._lookup(key)
        if hit is None:
            raise NotFound("no such audio (unknown or expired)")
        return Audio(key, hit.wav, hit.tier)

    async def _charge(self, key: str, client: str, text_chars: int) -> None:
        """A new synthesis costs tokens by its length from the synthesis bucket; joining one is free."""
        if not client or not self._limiter.enabled or key in self._flights:
            return
        decision = await self._limiter.take(client, SYNTHESIS, self._limiter.synthesis_cost(text_chars))
        if not decision.allowed:
            raise RateLimited("too many new syntheses; slow down", headers=decision.headers())

    def _join(self, key: str, request: SpeechRequest, voice: Voice, speaker_id: int | None) -> Flight:
        flight = self._flights.get(key)
        if flight is not None and flight.error is None and not flight.abandoned:
            return flight
        admission = self.scheduler.admit()  # raises Overloaded before anything starts
        flight = Flight(key, voice.sample_rate, asyncio.get_running_loop().time())
        self._flights[key] = flight
        flight.task = asyncio.ensure_future(self._produce(flight, request, voice, speaker_id, admission))
        return flight

    def unsubscribe(self, flight: Flight) -> None:
        flight.subscribers -= 1
        if flight.subscribers <= 0 and not flight.finished and flight.task is not None:
            # Cancelling is the fast path; the flag is the guarantee, because a library awaited
            # inside the producer may swallow a cancellation (redis-py and Python 3.11's wait_for
            # both can, when it coincides with a result).
            flight.abandon()
            flight.task.cancel()
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]  # a new request for the key starts afresh

    async def _produce(
        self,
        flight: Flight,
        request: SpeechRequest,
        voice: Voice,
        speaker_id: int | None,
        admission: Admission,
    ) -> None:
        loop = asyncio.get_running_loop()
        lock_token: str | None = None
        try:
            try:
                elsewhere, lock_token = await self._claim(flight.key)
                if elsewhere is not None:
                    # Another replica synthesized it while we waited: serve its bytes.
                    flight.append(bytes(parse_wav(elsewhere)[1]))
                    flight.finish(elsewhere)
                    self.cache.memory.put(flight.key, elsewhere)
                    flight.stored.set_result(True)
                    return
                sentences = await loop.run_in_executor(self._text_pool, voice.phonemize, request.text)
                plan = plan_chunks(
                    sentences, self._settings.first_chunk_max_phonemes, self._settings.chunk_max_phonemes
                )
                if not plan:
                    raise InvalidRequest("text has nothing to speak")
                first_at = 0.0
                audio_s = 0.0
                seconds_per_phoneme = 0.0  # this flight's measured inference cost
                for index, chunk in enumerate(plan):
                    await flight.room_for(index, self._settings.lookahead_chunks)
                    if flight.abandoned:
                        raise asyncio.CancelledError
                    # A later chunk must *finish* before the listener runs dry, so it has to start
                    # its own (estimated) inference time earlier than that moment.
                    run_dry_at = first_at + audio_s
                    estimate = seconds_per_phoneme * len(chunk.phonemes)
                    deadline = flight.created if index == 0 else run_dry_at - estimate
                    part = _Part(chunk, speaker_id, last=index == len(plan) - 1)
                    self._metrics.queue_depth.inc()
                    try:
                        pcm, compute_s = await self.scheduler.run_batched(
                            partial(self._render, voice, request.length_scale),
                            part,
                            deadline,
                            key=(voice.voice_id, request.length_scale),
                            size=len(chunk.phonemes) + 2,
                            limit=voice.batch_limit,
                        )
                    finally:
                        self._metrics.queue_depth.dec()
                    if index == 0:
                        first_at = loop.time()
                    seconds_per_phoneme = compute_s / max(1, len(chunk.phonemes))
                    audio_s += duration_s(voice.sample_rate, len(pcm))
                    flight.append(pcm)
                    if lock_token is not None:
                        await self.cache.redis.extend_lock(flight.key, self._lock_ttl_s)
            finally:
                admission.release()
            flight.finish(wav_bytes(voice.sample_rate, b"".join(flight.chunks)))
            durable = await self.cache.put(flight.key, flight.wav)
            if not durable:
                self._metrics.storage_errors.inc()
            flight.stored.set_result(durable)
        except asyncio.CancelledError:
            flight.fail(SynthesisFailed("synthesis was cancelled"))
            raise
        except TTSError as error:
            flight.fail(error)
        except Exception:
            logger.exception("synthesis failed for {}", flight.key)
            flight.fail(SynthesisFailed("synthesis failed"))
        finally:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            if lock_token is not None:
                await self.cache.redis.release_lock(flight.key, lock_token)

    async def _claim(self, key: str) -> tuple[bytes | None, str | None]:
        """Cross-replica single-flight: (bytes another replica made, None) or (None, our lock token).

        The lock is a short SET NX with an expiry, so a holder that dies frees it by itself;
        waiters poll L2 and take over when the lock goes away without a result. A duplicate
        synthesis now and then (an expired lock, Redis trouble) is harmless.
        """
        redis = self.cache.redis
        if not redis.enabled:
            return None, None
        token = uuid.uuid4().hex
        while True:
            acquired = await redis.acquire_lock(key, token, self._lock_ttl_s)
            if acquired is None:
                return None, None  # Redis is out: synthesize here
            if acquired:
                return None, token
            while True:
                await asyncio.sleep(LOCK_POLL_S)
                wav = await redis.get(key)
                if wav is not None:
                    return wav, None
                held = await redis.lock_held(key)
                if held is None:
                    return None, None
                if not held:
                    wav = await redis.get(key)
                    if wav is not None:
                        return wav, None
                    break  # the holder died or gave up: try to take the lock

    def _render(self, voice: Voice, length_scale: float, parts: list[_Part]) -> list[tuple[bytes, float]]:
        """Blocking, in an inference thread: chunks to faded PCM in one call, with its compute time.

        Every part gets the whole call's time: that is how long its flight waited for it, which is
        what the flight's deadline estimate needs. Metrics share the time out by phonemes.
        """
        started = time.perf_counter()
        rows = [voice.phoneme_ids(part.chunk.phonemes) for part in parts]
        outputs = voice.infer_batch(rows, length_scale, [part.speaker_id for part in parts])
        elapsed = time.perf_counter() - started
        fade = int(voice.sample_rate * self._settings.fade_ms / 1000)
        m = self._metrics
        m.batch_size.observe(len(parts))
        total_ids = sum(len(row) for row in rows)
        rendered: list[tuple[bytes, float]] = []
        for part, row, samples in zip(parts, rows, outputs, strict=True):
            pcm = to_pcm16(samples, self._settings.gain, fade)
            seconds = samples.size / voice.sample_rate
            share = elapsed * len(row) / total_ids
            m.inferences.labels(voice.voice_id).inc()
            m.synthesis_seconds.labels(voice.voice_id).observe(share)
            m.audio_seconds.labels(voice.voice_id).inc(seconds)
            if seconds > 0:
                m.real_time_factor.labels(voice.voice_id).observe(share / seconds)
            if part.chunk.ends_sentence and not part.last:
                pcm += silence(voice.sample_rate, self._settings.sentence_silence_s)
            rendered.append((pcm, elapsed))
        return rendered

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        await asyncio.gather(*(f.task for f in self._flights.values() if f.task), return_exceptions=True)
        self._text_pool.shutdown(wait=False, cancel_futures=True)
