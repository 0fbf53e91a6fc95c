"""SpeechService: a parsed request in, cached or freshly synthesized audio out.

Every miss becomes one `Flight`: a synthesis shared by all concurrent requests for the same key
(single-flight). A flight phonemizes the text into whole-sentence utterances; for each, the
encoder runs once (a scheduler job), then its audio is made window by window (one job each),
every job with the flight's deadline, so a new stream's first window overtakes the windows of
streams that still have audio buffered. The scheduler may batch jobs of equal shape from
different flights. Subscribers (streams and `/tts` calls) read the chunks (one a window) as they
arrive. When it completes, the WAV goes into the cache tiers; when its last stream goes away
first, it stops. A voice whose graph did not split synthesizes each utterance in one job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from cachetools import LRUCache
from loguru import logger

from server.audio.pcm import duration_s, parse_wav, silence, to_pcm16, wav_bytes
from server.cache.keys import KeyParts, audio_key, entry_name, is_key
from server.cache.tiers import MISS, WAV_SUFFIX, WORDS_SUFFIX, TieredCache
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
from server.settings import SynthesisSettings, TextSettings
from server.synthesis.catalog import VoiceCatalog
from server.synthesis.scheduler import Admission, Scheduler
from server.synthesis.voice import Voice
from server.synthesis.windows import Encoded, Window, window_bounds
from server.text.markdown import MarkdownRules
from server.text.normalize import NORMALIZATION_VERSION
from server.text.plan import FrontEnd, plan_text
from server.text.sentences import Pauses
from server.text.spans import Segment, TextFormat, TextPlan
from server.text.utterances import Utterance, plan_utterances
from server.timings import segment_phonemes, utterance_owners, word_timings

CACHED_SLICE_BYTES: Final = 64 * 1024  # a cached stream is written in slices so flushes pace it
LOCK_POLL_S: Final = 0.05
STARTUP_WAIT_S: Final = 30.0
# Added to every deadline of a background flight (a job's sentence): any interactive job, whose
# deadline is near the present, sorts first, so a stream's first window never waits behind one.
BACKGROUND_DELAY_S: Final = 1e6
# Characters of documents whose text plans are kept: a repeated text (every cache hit) skips the
# front-end (pysbd, normalization) and its hop to the text thread, which the hit path measured.
PLAN_MEMO_CHARS: Final = 1_000_000
# A first window sized for exactly the estimated wait of streams starting together still ran dry
# by tens of milliseconds (the estimate leaves out the calls' fixed costs); a quarter more did not.
FIRST_WINDOW_SAFETY: Final = 1.25
# Characters of requests whose resolution (voices, plan, key) is kept: a repeated request (every
# cache hit) then costs a lookup instead of the plan checks and the key's JSON and sha256.
RESOLVED_MEMO_CHARS: Final = 1_000_000
# Texts up to this many characters are planned on the IOLoop instead of in the text thread:
# about 1 ms of work at most, less than the hop there and back cost a short sentence's first
# audio (0.7 ms). Phonemizing stays in the text thread: espeak is not thread-safe, and
# piper-phonemize lets go of the GIL while it runs, so one thread must do all of it.
INLINE_TEXT_CHARS: Final = 300
# What a new worker says to itself before it reports ready: a sentence split, an abbreviation, a
# sum of money, a date and a time, so the normalizer's rules and num2words run once too.
WARM_UP_TEXT: Final = "Dr. Smith paid $3.50 on May 12, 2024 at 10:30. Then he left!"


@dataclass(frozen=True)
class _Part:
    """One piece of audio work of one flight, as it travels through a (perhaps shared) call.

    For a windowed voice it is one window of an encoded utterance; otherwise a whole utterance.
    """

    ids: tuple[int, ...]
    speaker_id: int | None
    fade_in: bool  # the utterance starts here
    fade_out: bool  # the utterance ends here
    silence_s: float  # silence after it: a sentence's, paragraph's or break's pause
    gain: float  # the voice's loudness gain times the request's volume
    window: Window | None = None
    encode_s: float = 0.0  # the encoder's time for this utterance, counted with its first window


@dataclass(frozen=True)
class SentenceFrames:
    """Frames per phoneme id of one utterance and where its audio starts (for word timings)."""

    ids: tuple[int, ...]
    frames: tuple[int, ...]  # the duration Ceil: frames for each id
    hop: int  # samples per frame
    start_sample: int  # the utterance's first sample in the flight's PCM


@dataclass(frozen=True)
class _Resolved:
    """A request as the service works on it: its voices, its plan and its key."""

    voice: Voice
    speaker_id: int | None
    length_scale: float
    key: str
    plan: TextPlan
    voices: dict[str, Voice]  # voices the document switches to, by the name it gives
    volume: float = 1.0

    def segment_voice(self, segment: Segment) -> tuple[Voice, int | None]:
        if segment.voice is None:
            return self.voice, self.speaker_id
        voice = self.voices[segment.voice]
        return voice, voice.speaker_id(None)


def front_end(synthesis: SynthesisSettings, text: TextSettings) -> FrontEnd:
    """The front-end's settings, from the configuration."""
    return FrontEnd(
        Pauses(synthesis.sentence_silence_s, synthesis.paragraph_silence_s),
        MarkdownRules(text.code_block_text, text.table_text),
        text.normalize,
    )


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
        self.sentences: list[SentenceFrames] = []  # filled as each utterance is encoded
        # (segment, word) -> [first, end) samples of the word in the flight's PCM
        self.word_samples: dict[tuple[int, int], list[int]] = {}
        self.timed = True  # every utterance had frames per phoneme (a windowed voice)
        self.words_stored: asyncio.Future[None] | None = None  # the timings' put, once all are known
        self.plan: TextPlan | None = None
        # (segment index, its phonemes and owners being made): started while the tiers were asked
        self.ahead: tuple[int, concurrent.futures.Future[Any]] | None = None
        self.words: list[dict[str, Any]] = []  # timings of the words encoded so far, in order
        self.pcm_bytes = 0
        self.finished = False
        self.error: TTSError | None = None
        self.wav = b""
        self.stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.subscribers = 0
        self.consumed = 0  # most chunks any subscriber has taken: paces the producer
        self.unbounded = False  # a /tts caller wants it all: no pacing
        self.background = False  # only jobs want it: lowest priority, in small windows
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
        self.pcm_bytes += len(pcm)
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
        self._cached_words: list[dict[str, Any]] = []

    async def load_words(self) -> None:
        """For a cached stream: its stored word timings (a live one has them as it goes)."""
        if self._cached is not None:
            self._cached_words = await self._service.words(self.key) or []

    def words(self) -> list[dict[str, Any]]:
        """The timings of every word whose audio has been or is about to be sent, in order."""
        if self._flight is not None:
            return self._flight.words
        return self._cached_words

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
        text: TextSettings | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_idle = on_idle  # called when the last synthesis in flight ends
        self._front = front_end(settings, text or TextSettings())
        # Plans are frozen values of (document, format, espeak voice) under fixed front-end
        # settings; only the IOLoop's thread reads and fills this, so it needs no lock.
        self._plans: LRUCache[tuple[str, str, str], TextPlan] = LRUCache(
            maxsize=PLAN_MEMO_CHARS, getsizeof=lambda plan: 256 + sum(len(s.text) for s in plan.segments)
        )
        # A request's resolution is a function of the request, the frozen settings and the voices
        # it names; an entry is used only while the catalog still holds those very voices. Sized
        # by its text twice: the request's (in the memo's key) and the plan's.
        self._resolved: LRUCache[tuple[Any, ...], _Resolved] = LRUCache(
            maxsize=RESOLVED_MEMO_CHARS,
            getsizeof=lambda memo: 256 + 2 * sum(len(s.text) for s in memo.plan.segments),
        )
        self._limiter = limiter
        self._lock_ttl_s = lock_ttl_s
        self.catalog = catalog
        self.cache = cache
        self.scheduler = scheduler
        self._metrics = metrics
        self._flights: dict[str, Flight] = {}
        # Seconds of compute per window frame, by voice, from recent windows: sizes first windows.
        self._frame_compute_s: dict[str, float] = {}
        self._loaded = asyncio.Event()
        # espeak is serialized anyway; its own thread keeps phonemizing from queueing behind
        # inference, which would delay every new request's first chunk.
        self._text_pool = ThreadPoolExecutor(1, thread_name_prefix="phonemize")

    @property
    def flights(self) -> int:
        return len(self._flights)

    def _render_params(self) -> tuple[float, ...]:
        s = self._settings
        windows = (s.first_window_frames, s.window_frames) if s.windowed else (0, 0)
        return (s.gain, s.loudness_lufs, s.fade_ms, *windows, s.max_sentence_phonemes)

    def loaded(self) -> None:
        """Voice loading ended (ready or not): requests waiting for it go on."""
        self._loaded.set()

    async def warm_up(self) -> None:
        """Once, before the worker reports ready: plan and phonemize a fixed text for each of the
        voices' languages, where requests do (planning on the IOLoop, espeak in the text thread).

        A new worker's first stream measured about 40 ms slower to first audio than its next ones:
        espeak loading the language's dictionary, the first run of the sentence splitter and the
        normalizer (the first plan alone takes 8 ms, later ones about 1).
        """
        loop = asyncio.get_running_loop()
        by_language = {voice.espeak_voice: voice for voice in self.catalog.voices()}
        for voice in by_language.values():
            plan = plan_text(WARM_UP_TEXT, TextFormat.PLAIN, voice.espeak_voice, self._front)
            for segment in plan.segments:
                if segment.runs:
                    await loop.run_in_executor(self._text_pool, segment_phonemes, voice, segment)

    async def _until_ready(self) -> None:
        # A worker that gunicorn just (re)started shares the listening socket with ready ones,
        # so it may get requests while its voices load (about a second): hold them briefly
        # rather than fail them.
        if not self.catalog.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), STARTUP_WAIT_S)
        if not self.catalog.ready:
            raise NotReady(self.catalog.problem or "voices are still loading", retry_after_s=2)

    async def _resolve(self, request: SpeechRequest) -> tuple[_Resolved, bool]:
        """The request resolved, and whether that was done anew (not a repeat of a known request)."""
        await self._until_ready()
        voice = self.catalog.get(request.voice)
        # The numbers' types too: the key writes 1 and 1.0 differently, and the two are equal.
        memo = (request, type(request.length_scale), type(request.volume))
        known = self._resolved.get(memo)
        if known is not None and known.voice is voice and self._same_voices(known.voices):
            return known, False
        resolved = await self._resolve_anew(request, voice)
        with contextlib.suppress(ValueError):  # a document larger than the whole memo
            self._resolved[memo] = resolved
        return resolved, True

    def _phonemize_ahead(self, resolved: _Resolved) -> tuple[int, concurrent.futures.Future[Any]] | None:
        """Start phonemizing the first spoken segment in the text thread while the tiers are
        asked and the lock is taken (0.65 ms of a short sentence's first audio, and about as long
        as those). A repeated request (resolved before) is most likely a hit, so it is left alone;
        a new text found in a shared tier wastes one phonemizing off the IOLoop."""
        for index, segment in enumerate(resolved.plan.segments):
            if segment.runs:
                voice, _ = resolved.segment_voice(segment)
                return index, self._text_pool.submit(segment_phonemes, voice, segment)
        return None

    def _same_voices(self, voices: dict[str, Voice]) -> bool:
        try:
            return all(self.catalog.get(name) is voice for name, voice in voices.items())
        except TTSError:  # a voice the document switches to is gone: resolve again, and fail there
            return False

    async def _resolve_anew(self, request: SpeechRequest, voice: Voice) -> _Resolved:
        try:
            speaker_id = voice.speaker_id(request.speaker)
        except KeyError:
            raise InvalidRequest(f"unknown speaker {request.speaker!r} for voice {voice.voice_id}") from None
        length_scale = request.length_scale * voice.length_scale  # the voice's own rate, then the speed
        memo = (request.source, request.text_format.value, voice.espeak_voice)
        plan = self._plans.get(memo)
        if plan is None:
            planned = (request.source, request.text_format, voice.espeak_voice, self._front)
            if len(request.source) <= INLINE_TEXT_CHARS:
                plan = plan_text(*planned)
            else:
                plan = await asyncio.get_running_loop().run_in_executor(self._text_pool, plan_text, *planned)
            with contextlib.suppress(ValueError):  # a document larger than the whole memo
                self._plans[memo] = plan
        if not plan.spoken.strip():
            raise InvalidRequest("text has nothing to speak", param="text")
        voices = self.switched_voices(voice, plan.voices)
        for segment in plan.segments:
            _check_phonemes(voices.get(segment.voice or "", voice), segment)
        front = (
            request.text_format.value,
            NORMALIZATION_VERSION,
            *self._front.key(),
            *(f"{other.voice_id}:{other.digest}" for other in voices.values()),
        )
        key = audio_key(
            KeyParts(
                voice.voice_id,
                voice.digest,
                speaker_id,
                request.source,
                length_scale,
                voice.noise_scale,
                voice.noise_w,
                (*self._render_params(), request.volume),
                front,
            )
        )
        return _Resolved(voice, speaker_id, length_scale, key, plan, voices, request.volume)

    def switched_voices(self, voice: Voice, names: Iterable[str]) -> dict[str, Voice]:
        """The voices an SSML document switches to; each must share the request voice's rate."""
        voices: dict[str, Voice] = {}
        for name in names:
            other = self.catalog.get(name)
            if other.sample_rate != voice.sample_rate:
                raise InvalidRequest(
                    f"voice {other.voice_id} ({other.sample_rate} Hz) cannot be mixed with "
                    f"{voice.voice_id} ({voice.sample_rate} Hz): their sample rates differ",
                    param="text",
                )
            voices[name] = other
        return voices

    async def _lookup(self, key: str):
        hit = await self.cache.get(key)
        if hit is None:
            self._metrics.cache_misses.inc()
        else:
            self._metrics.cache_hits.labels(hit.tier).inc()
        return hit

    async def synthesize(
        self, request: SpeechRequest, client: str = "", *, background: bool = False
    ) -> Audio:
        """The whole WAV, stored where a URL can reach it (for `/tts`, and each sentence of a job).

        `background` (a job's sentence) runs after every interactive request's work and only on
        spare capacity (see the scheduler), in windows.
        """
        resolved, anew = await self._resolve(request)
        key = resolved.key
        ahead = self._phonemize_ahead(resolved) if anew else None
        hit = await self._lookup(key)
        if hit is not None:
            self.cache.keep_alive(key, hit.wav)
            return Audio(key, hit.wav, hit.tier)
        await self._charge(key, client, len(request.text))
        flight = self._join(resolved, ahead, background=background)
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
        resolved, anew = await self._resolve(request)
        key, rate = resolved.key, resolved.voice.sample_rate
        ahead = self._phonemize_ahead(resolved) if anew else None
        hit = await self._lookup(key)
        if hit is not None:
            return Stream(self, key, rate, hit.tier, cached=hit.wav)
        await self._charge(key, client, len(request.text))
        flight = self._join(resolved, ahead)
        flight.subscribers += 1
        return Stream(self, key, rate, MISS, flight=flight)

    async def audio(self, key: str) -> Audio:
        """A stored WAV by key (for `/audio/{key}.wav`)."""
        if not is_key(key):
            raise NotFound("no such audio")
        hit = await self._lookup(key)
        if hit is None:
            raise NotFound("no such audio (unknown or expired)")
        return Audio(key, hit.wav, hit.tier)

    async def words(self, key: str) -> list[dict[str, Any]] | None:
        """The stored word timings of an audio entry; None when it has none (a voice that is
        not windowed has no frames per phoneme)."""
        if not is_key(key):
            return None
        hit = await self.cache.get(key, WORDS_SUFFIX)
        return None if hit is None else json.loads(hit.data)

    async def _charge(self, key: str, client: str, text_chars: int) -> None:
        """A new synthesis costs tokens by its length from the synthesis bucket; joining one is free."""
        if not client or not self._limiter.enabled or key in self._flights:
            return
        decision = await self._limiter.take(client, SYNTHESIS, self._limiter.synthesis_cost(text_chars))
        if not decision.allowed:
            raise RateLimited("too many new syntheses; slow down", headers=decision.headers())

    def _join(
        self,
        resolved: _Resolved,
        ahead: tuple[int, concurrent.futures.Future[Any]] | None = None,
        *,
        background: bool = False,
    ) -> Flight:
        key = resolved.key
        flight = self._flights.get(key)
        if flight is not None and flight.error is None and not flight.abandoned:
            flight.background = flight.background and background  # a listener joined: its priority
            return flight
        admission = self.scheduler.admit()  # raises Overloaded before anything starts
        flight = Flight(key, resolved.voice.sample_rate, asyncio.get_running_loop().time())
        flight.background = background
        flight.plan = resolved.plan
        flight.ahead = ahead
        self._flights[key] = flight
        flight.task = asyncio.ensure_future(self._produce(flight, resolved, admission))
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

    async def _produce(self, flight: Flight, resolved: _Resolved, admission: Admission) -> None:
        lock_token: str | None = None
        try:
            try:
                elsewhere, lock_token = await self._claim(flight.key)
                if elsewhere is not None:
                    # Another replica synthesized it while we waited: serve its bytes.
                    flight.append(bytes(parse_wav(elsewhere)[1]))
                    flight.finish(elsewhere)
                    self.cache.memory.put(entry_name(flight.key, WAV_SUFFIX), elsewhere)
                    flight.stored.set_result(True)
                    return
                await self._segments(flight, resolved, lock_token)
            finally:
                admission.release()
            flight.finish(wav_bytes(flight.sample_rate, b"".join(flight.chunks)))
            if flight.timed:
                # Before the WAV reaches the shared tiers: whoever finds the audio finds its word
                # timings too (this worker's L1 has the WAV at once, as before). They were stored
                # while the last windows were made (`_store_words`).
                self.cache.memory.put(entry_name(flight.key, WAV_SUFFIX), flight.wav)
                await (flight.words_stored or self._store_words(flight, resolved.plan))
            durable = await self.cache.put(flight.key, flight.wav)
            if not durable:
                self._metrics.storage_errors.inc()
            flight.stored.set_result(durable)
        except asyncio.CancelledError:
            if flight.words_stored is not None:
                flight.words_stored.cancel()
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
            if not self._flights and self._on_idle is not None:
                # The last synthesis ended: the buffers of its calls go back to the system (about
                # 110 MiB after a bench-like run) once the worker stays idle (server.memory).
                self._on_idle()
            if lock_token is not None:
                await self.cache.redis.release_lock(flight.key, lock_token)

    async def _store_words(self, flight: Flight, plan: TextPlan) -> None:
        words = word_timings(flight.word_samples, flight.sample_rate, plan)
        await self.cache.put(flight.key, json.dumps(words).encode(), WORDS_SUFFIX)

    async def _segments(self, flight: Flight, resolved: _Resolved, lock_token: str | None) -> None:
        """The plan's segments in order: each phonemized (in the text thread), then its utterances."""
        loop = asyncio.get_running_loop()
        pacer = _Pacer(flight, loop, self._settings.lookahead_chunks)
        segments = resolved.plan.segments
        last_spoken = max((index for index, segment in enumerate(segments) if segment.runs), default=-1)
        spoken = False
        for index, segment in enumerate(segments):
            pause = 0.0 if index == len(segments) - 1 else segment.pause_s  # no silence at the end
            if not segment.runs:  # a break with nothing before it in its block
                if pause:
                    await pacer.room()
                    flight.append(silence(flight.sample_rate, pause))
                continue
            voice, speaker_id = resolved.segment_voice(segment)
            ahead, flight.ahead = flight.ahead, None  # the first spoken segment's, begun early
            if ahead is None or ahead[0] != index:
                ahead = (index, self._text_pool.submit(segment_phonemes, voice, segment))
            phonemes, owners = await asyncio.wrap_future(ahead[1])
            utterances = plan_utterances([phonemes], self._settings.max_sentence_phonemes)
            sliced = utterance_owners(phonemes, owners, utterances)
            # The voice's own rate, the request's speed, then the document's (SSML prosody).
            length_scale = resolved.length_scale / segment.rate
            if voice is not resolved.voice:
                length_scale *= voice.length_scale / resolved.voice.length_scale
            for number, (utterance, utterance_words) in enumerate(zip(utterances, sliced, strict=True)):
                silence_s = pause if utterance.ends_sentence else 0.0
                final = index == last_spoken and number == len(utterances) - 1
                await self._utterance(
                    flight,
                    voice,
                    speaker_id,
                    length_scale,
                    utterance,
                    silence_s,
                    resolved.volume,
                    pacer,
                    (index, utterance_words),
                    final=final,
                )
                spoken = True
            if lock_token is not None:
                await self.cache.redis.extend_lock(flight.key, self._lock_ttl_s)
        if not spoken:
            raise InvalidRequest("text has nothing to speak", param="text")

    @staticmethod
    def _time_words(
        flight: Flight, voice: Voice, segment: int, utterance: Utterance, owners: tuple[int | None, ...]
    ) -> None:
        """Where each word of the utterance just encoded lies in the flight's PCM (known before
        its audio is made, so a stream can send the words before their audio)."""
        frames = flight.sentences[-1]
        spans = voice.phoneme_frames(utterance.phonemes, frames.frames)
        said: dict[tuple[int, int], list[int]] = {}
        for owner, span in zip(owners, spans, strict=True):
            if owner is None or span is None:
                continue
            first, end = (frames.start_sample + frame * frames.hop for frame in span)
            found = said.setdefault((segment, owner), [first, end])
            found[0], found[1] = min(found[0], first), max(found[1], end)
        # The words tile the utterance: a word lasts until the next one starts (the pause of a
        # comma, the space between words belong to the word before), the first starts with the
        # utterance and the last ends with it. So words and the silences between utterances
        # account for every sample, and a highlight never drops out between two words.
        ordered = sorted(said.values())
        if ordered:
            ordered[0][0] = frames.start_sample
            for word, following in itertools.pairwise(ordered):
                word[1] = following[0]
            ordered[-1][1] = frames.start_sample + sum(frames.frames) * frames.hop
        flight.word_samples.update(said)  # utterances are cut at word breaks: a word is in one
        if flight.plan is not None:
            flight.words = word_timings(flight.word_samples, flight.sample_rate, flight.plan, partial=True)

    async def _utterance(
        self,
        flight: Flight,
        voice: Voice,
        speaker_id: int | None,
        length_scale: float,
        utterance: Utterance,
        silence_s: float,
        volume: float,
        pacer: _Pacer,
        timing: tuple[int, tuple[int | None, ...]] = (0, ()),
        *,
        final: bool = False,
    ) -> None:
        """One utterance: the encoder once, then its windows in order (or one whole-utterance job).

        `final`: the flight's last; once it is encoded every word is placed, so the word timings
        are stored while its windows are made (`_produce` awaits them before storing the WAV).
        """
        ids = tuple(voice.phoneme_ids(utterance.phonemes))
        scale_key = (voice.voice_id, length_scale)
        if voice.windows is None:
            flight.timed = False  # the stock graph gives no frames per phoneme
            part = _Part(ids, speaker_id, True, True, silence_s, voice.gain * volume)
            await self._job(
                flight,
                pacer,
                partial(self._render, voice, length_scale),
                part,
                ("whole", *scale_key),
                len(ids),
                voice.batch_limit,
                len(ids),
            )
            return
        await pacer.room()
        s = self._settings
        gain = voice.gain * volume
        # A stream's first audio goes first: see `store_words` below.
        first_audio = not flight.chunks and not flight.unbounded and not flight.background
        started: tuple[bytes, float] | None = None  # the first window's PCM, made with the encoder
        # The last utterance is encoded: every word is placed, so its timings can be stored while
        # its windows are made. A stream's first audio goes first: its window runs on the same
        # cores as the storing (timings, JSON, the tiers' writes), which delayed it by up to 4 ms.
        store_words = final and flight.timed and flight.plan is not None
        # The encoder and the first window in one call where two gain nothing, which saves a
        # round trip through the IOLoop between them (0.7 to 0.9 ms): a lone new stream's first
        # utterance, and a file's utterances (one window each) when calls are not batched, but
        # for the last, whose word timings are stored while its window is made. Streams starting
        # together keep separate calls, so their encoders can share one.
        whole = flight.unbounded and not flight.background
        if (first_audio and not self._starting_besides(flight)) or (
            whole and voice.batch_limit <= 1 and not store_words
        ):
            (encoded, encode_s, made_parts, pcm, window_s), _ = await self._job(
                flight,
                pacer,
                partial(self._encode_and_start, flight, voice, length_scale, silence_s, gain, whole),
                (ids, speaker_id),
                ("start", *scale_key),
                len(ids),
                1,
                None,
            )
            started = (pcm, window_s)
        else:
            encoded, encode_s = await self._job(
                flight,
                pacer,
                partial(self._encode, voice, length_scale),
                (ids, speaker_id),
                ("encode", *scale_key),
                len(ids),
                voice.batch_limit,
                None,
            )
        pacer.encoded(encode_s)
        start_sample = flight.pcm_bytes // 2
        flight.sentences.append(
            SentenceFrames(ids, tuple(int(f) for f in encoded.durations), voice.windows.hop, start_sample)
        )
        self._time_words(flight, voice, timing[0], utterance, timing[1])
        if store_words and not first_audio:
            flight.words_stored = asyncio.ensure_future(self._store_words(flight, flight.plan))
        if started is not None:
            parts = made_parts  # as `_encode_and_start` cut them, the first one made
        else:
            if whole:
                # A file: nobody listens while it is made, so one window is fastest. A job's
                # sentence keeps to windows, so interactive work slots in between them.
                bounds = [(0, encoded.frames)]
            else:
                # A job's sentence has no listener waiting for its first audio: no small first one.
                first = self._first_window(flight, voice, encode_s) if first_audio else s.window_frames
                bounds = window_bounds(encoded.frames, first, s.window_frames)
            parts = _window_parts(ids, speaker_id, encoded, bounds, silence_s, gain, encode_s)
        margins = (voice.windows.flow_margin, voice.windows.decoder_margin)
        for number, part in enumerate(parts):
            assert part.window is not None
            window = part.window
            if number == 0 and started is not None:
                pcm, compute_s = started
                self._took(flight, pacer, voice.voice_id, pcm, compute_s, window.end - window.start)
            else:
                flow_start, flow_end, dec_start, dec_end = window.spans(*margins)
                await self._job(
                    flight,
                    pacer,
                    partial(self._render_windows, voice),
                    part,
                    ("window", voice.voice_id, flow_end - flow_start, dec_end - dec_start),
                    dec_end - dec_start,
                    voice.batch_limit,
                    window.end - window.start,
                )
            if store_words and flight.words_stored is None:
                flight.words_stored = asyncio.ensure_future(self._store_words(flight, flight.plan))

    def _starting_besides(self, flight: Flight) -> int:
        """How many other streams are waiting for their first audio (also asked from an inference
        thread: `tuple` copies the flights at once, as the IOLoop may add one meanwhile)."""
        return sum(
            1
            for other in tuple(self._flights.values())
            if other is not flight and not other.chunks and not other.background and not other.finished
        )

    def _first_window(self, flight: Flight, voice: Voice, encode_s: float) -> int:
        """Frames of a stream's first window: small when it starts alone; when other streams are
        starting too, enough audio to play while their first work (their encoders and first
        windows, which go first) and this stream's second window are made, so starting together
        does not make the first ones run dry."""
        s = self._settings
        windows = voice.windows
        per_frame = self._frame_compute_s.get(voice.voice_id) or (windows and windows.frame_compute_s)
        starting = self._starting_besides(flight)
        if not starting or not per_frame or windows is None:
            return s.first_window_frames
        wait_s = FIRST_WINDOW_SAFETY * (
            starting * (encode_s + per_frame * s.first_window_frames)
            + (starting + 1) * per_frame * s.window_frames
        )
        frame_s = windows.hop / voice.sample_rate
        return max(s.first_window_frames, min(s.window_frames, math.ceil(wait_s / frame_s)))

    async def _job(
        self,
        flight: Flight,
        pacer: _Pacer,
        run_many: Any,
        item: Any,
        key: tuple[Any, ...],
        size: int,
        limit: int,
        frames: int | None,
    ) -> Any:
        """One scheduler job with the flight's deadline; audio jobs (`frames` given) append their PCM."""
        if frames is not None:
            await pacer.room()
        deadline = pacer.deadline(frames or 0) + (BACKGROUND_DELAY_S if flight.background else 0.0)
        self._metrics.queue_depth.inc()
        try:
            result, compute_s = await self.scheduler.run_batched(
                run_many, item, deadline, key=key, size=size, limit=limit, background=flight.background
            )
        finally:
            self._metrics.queue_depth.dec()
        if frames is None:
            return result, compute_s
        self._took(flight, pacer, key[1] if key[0] == "window" else None, result, compute_s, frames)
        return result

    def _took(
        self, flight: Flight, pacer: _Pacer, windowed: str | None, pcm: bytes, compute_s: float, frames: int
    ) -> None:
        """A job's audio, into the flight; `windowed`: the voice of a window, whose time per frame
        sizes later first windows (`_first_window`)."""
        pacer.played(len(pcm), compute_s, frames, flight.sample_rate)
        if windowed is not None:
            per_frame = compute_s / max(1, frames)
            known = self._frame_compute_s.get(windowed, per_frame)
            self._frame_compute_s[windowed] = 0.8 * known + 0.2 * per_frame
        flight.append(pcm)

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
                wav = await redis.get(entry_name(key, WAV_SUFFIX))
                if wav is not None:
                    return wav, None
                held = await redis.lock_held(key)
                if held is None:
                    return None, None
                if not held:
                    wav = await redis.get(entry_name(key, WAV_SUFFIX))
                    if wav is not None:
                        return wav, None
                    break  # the holder died or gave up: try to take the lock

    def _encode(
        self, voice: Voice, length_scale: float, items: list[tuple[tuple[int, ...], int | None]]
    ) -> list[tuple[Encoded, float]]:
        """Blocking, in an inference thread: the encoder for several utterances in one call."""
        started = time.perf_counter()
        encoded = voice.encode([ids for ids, _ in items], length_scale, [sid for _, sid in items])
        elapsed = time.perf_counter() - started
        return [(e, elapsed) for e in encoded]

    def _encode_and_start(
        self,
        flight: Flight,
        voice: Voice,
        length_scale: float,
        silence_s: float,
        gain: float,
        whole: bool,
        items: list[tuple[tuple[int, ...], int | None]],
    ) -> list[tuple[tuple[Encoded, float, list[_Part], bytes, float], float]]:
        """Blocking, in an inference thread: an utterance's encoder, then its first window (all of
        it when `whole`): (encoded, encoder time, all its windows, the first's PCM and time), and
        the call's time. A stream's first window is sized when the encoder is done, for the streams
        starting by then."""
        ((ids, speaker_id),) = items
        ((encoded, encode_s),) = self._encode(voice, length_scale, items)
        first = encoded.frames if whole else self._first_window(flight, voice, encode_s)
        bounds = window_bounds(encoded.frames, first, self._settings.window_frames)
        parts = _window_parts(ids, speaker_id, encoded, bounds, silence_s, gain, encode_s)
        ((pcm, window_s),) = self._render_windows(voice, parts[:1])
        return [((encoded, encode_s, parts, pcm, window_s), encode_s + window_s)]

    def _render(self, voice: Voice, length_scale: float, parts: list[_Part]) -> list[tuple[bytes, float]]:
        """Blocking, in an inference thread: whole utterances to PCM in one stock-graph call."""
        started = time.perf_counter()
        outputs = voice.infer_batch(
            [part.ids for part in parts], length_scale, [part.speaker_id for part in parts]
        )
        return self._pcm(voice, parts, outputs, time.perf_counter() - started)

    def _render_windows(self, voice: Voice, parts: list[_Part]) -> list[tuple[bytes, float]]:
        """Blocking, in an inference thread: windows (of equal shape) to PCM in one flow and decoder call."""
        assert voice.windows is not None
        started = time.perf_counter()
        outputs = voice.windows.render([part.window for part in parts if part.window is not None])
        return self._pcm(voice, parts, outputs, time.perf_counter() - started)

    def _pcm(
        self, voice: Voice, parts: list[_Part], outputs: list[Any], elapsed: float
    ) -> list[tuple[bytes, float]]:
        """Faded PCM for each part, with the call's compute time; metrics share the time out by samples.

        Every part gets the whole call's time: that is how long its flight waited for it, which is
        what the flight's deadline estimate needs.
        """
        fade = int(voice.sample_rate * self._settings.fade_ms / 1000)
        m = self._metrics
        m.batch_size.observe(len(parts))
        total = sum(samples.size for samples in outputs) or 1
        rendered: list[tuple[bytes, float]] = []
        for part, samples in zip(parts, outputs, strict=True):
            pcm = to_pcm16(samples, part.gain, fade, fade_in=part.fade_in, fade_out=part.fade_out)
            seconds = samples.size / voice.sample_rate
            share = elapsed * samples.size / total + part.encode_s
            m.inferences.labels(voice.voice_id).inc()
            m.synthesis_seconds.labels(voice.voice_id).observe(share)
            m.audio_seconds.labels(voice.voice_id).inc(seconds)
            if seconds > 0:
                m.real_time_factor.labels(voice.voice_id).observe(share / seconds)
            if part.silence_s:
                pcm += silence(voice.sample_rate, part.silence_s)
            rendered.append((pcm, elapsed))
        return rendered

    async def close(self) -> None:
        for flight in list(self._flights.values()):
            if flight.task is not None:
                flight.task.cancel()
        await asyncio.gather(*(f.task for f in self._flights.values() if f.task), return_exceptions=True)
        self._text_pool.shutdown(wait=False, cancel_futures=True)


def _window_parts(
    ids: tuple[int, ...],
    speaker_id: int | None,
    encoded: Encoded,
    bounds: list[tuple[int, int]],
    silence_s: float,
    gain: float,
    encode_s: float,
) -> list[_Part]:
    """An encoded utterance's windows: it fades in at the first and out at the last, after which
    comes its silence; the encoder's time is counted with the first."""
    last = len(bounds) - 1
    return [
        _Part(
            ids,
            speaker_id,
            fade_in=number == 0,
            fade_out=number == last,
            silence_s=silence_s if number == last else 0.0,
            gain=gain,
            window=Window(encoded, start, end),
            encode_s=encode_s if number == 0 else 0.0,
        )
        for number, (start, end) in enumerate(bounds)
    ]


def _check_phonemes(voice: Voice, segment: Segment) -> None:
    """Inline phonemes (`[[ ]]`, SSML `phoneme`) must all be the voice's own."""
    unknown = sorted({p for run in segment.runs for p in run.phonemes if p not in voice.phoneme_id_map})
    if unknown:
        raise InvalidRequest(f"phonemes unknown to voice {voice.voice_id}: {' '.join(unknown)}", param="text")


class _Pacer:
    """A flight's deadlines: when its next job must start so the listener never runs dry.

    The first job's deadline is the flight's arrival, so a new stream's encoder and first window
    go before the windows of streams that still have audio buffered. Later jobs must *finish*
    before the audio made so far has played, so they start their estimated compute time earlier.
    """

    def __init__(self, flight: Flight, loop: asyncio.AbstractEventLoop, lookahead: int) -> None:
        self._flight = flight
        self._loop = loop
        self._lookahead = lookahead
        self._first_at: float | None = None
        self._audio_s = 0.0
        self._seconds_per_frame = 0.0  # measured from this flight's own windows
        self._encode_s = 0.0

    async def room(self) -> None:
        """Flow control: produce at most `lookahead` chunks ahead of the fastest reader."""
        flight = self._flight
        await flight.room_for(len(flight.chunks), self._lookahead)
        if flight.abandoned:
            raise asyncio.CancelledError

    def deadline(self, frames: int) -> float:
        if self._first_at is None:
            return self._flight.created
        estimate = self._seconds_per_frame * frames if frames else self._encode_s
        return self._first_at + self._audio_s - estimate

    def encoded(self, compute_s: float) -> None:
        self._encode_s = compute_s

    def played(self, pcm_bytes: int, compute_s: float, frames: int, sample_rate: int) -> None:
        if self._first_at is None:
            self._first_at = self._loop.time()
        self._seconds_per_frame = compute_s / max(1, frames)
        self._audio_s += duration_s(sample_rate, pcm_bytes)
