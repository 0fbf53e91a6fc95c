"""The job runner: one document, sentence by sentence, through the same SpeechService as `/tts`.

SAQ calls `run` in a worker process. The document is split (`document.py`, in a thread) into
pieces, each the text of a request `/tts` accepts in the job's text format (a sentence; an SSML
paragraph), parsed with the job's fields as `/tts` parses them. Each is a background
`synthesize` (the scheduler runs it after every interactive request's work), so its audio lands
in the tiers under the same key `/tts` gives it; then the piece is appended to the job's cursor.
An attempt that follows a dead worker starts at the cursor: finished pieces are never synthesized
again. When every piece is done they are joined (with the sentence silence `/tts` puts between
sentences, the paragraph silence between segments) into one WAV stored under the job's own key,
which `/audio/{key}.{ext}` serves and encodes once per format. A cancel takes effect between pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from loguru import logger

from server.audio.pcm import duration_s, parse_wav, silence, wav_bytes
from server.cache.tiers import WORDS_SUFFIX
from server.errors import InvalidRequest, NotFound, Overloaded, TTSError
from server.jobs import store as states
from server.jobs.document import Document, SplitRules, split_document
from server.jobs.store import JobStore, Record
from server.metrics import Metrics
from server.request import SpeechRequest, speech_request
from server.schemas import SpeechFields
from server.settings import Settings
from server.speech import Audio, SpeechService, front_end
from server.text.plan import segment_language
from server.text.spans import TextFormat

OVERLOADED_BACKOFF_S: Final = (0.05, 2.0)


def output_key(job_id: str) -> str:
    """The tiers' key of a job's joined audio (64 hex digits, like every audio key)."""
    return hashlib.sha256(f"job-output:{job_id}".encode()).hexdigest()


def segment_key(job_id: str, index: int) -> str:
    """The tiers' key of one segment's (a paragraph's or heading's) own audio."""
    return hashlib.sha256(f"job-segment:{job_id}:{index}".encode()).hexdigest()


class Cancelled(Exception):
    """The job's owner asked to cancel it; raised between sentences."""


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        speech: SpeechService,
        metrics: Metrics,
        on_finished: Callable[[str], Awaitable[None]],
    ) -> None:
        self._settings = settings
        self._store = store
        self._speech = speech
        self._metrics = metrics
        self._on_finished = on_finished
        # Splitting runs the sentence segmenter (about 15 ms per 1,000 characters): off the IOLoop.
        self._text_pool = ThreadPoolExecutor(1, thread_name_prefix="job-text")

    def close(self) -> None:
        self._text_pool.shutdown(wait=False, cancel_futures=True)

    async def document(self, text: str, wanted: dict[str, Any]) -> Document:
        """The document's segments and pieces, split in the runner's text thread; the voices an
        SSML document switches to must be loaded (the errors /tts gives)."""
        voice = self._speech.catalog.get(wanted["voice"])
        settings = self._settings
        rules = SplitRules(
            segment_language(voice.espeak_voice),
            front_end(settings.synthesis, settings.text).markdown,  # the rules /tts reads markdown by
            settings.synthesis.max_text_chars,
        )
        text_format = TextFormat(wanted.get("text_format", TextFormat.PLAIN))
        loop = asyncio.get_running_loop()
        document = await loop.run_in_executor(self._text_pool, split_document, text, text_format, rules)
        self._speech.switched_voices(voice, document.voices)
        return document

    async def run(self, ctx: dict[str, Any], *, job_id: str) -> None:
        """The SAQ function: one attempt at one job."""
        saq_job = ctx["job"]
        record = await self._store.get(job_id)
        if record is None or record.terminal:
            return  # deleted, or finished by an earlier attempt
        text = await self._store.text(job_id)
        if record.cancel or text is None:
            await self._finish(job_id, states.CANCELLED)
            return
        try:
            document = await self.document(text, record.request)
        except TTSError as error:  # its voice is gone since (the configuration changed), bad SSML
            await self._finish(job_id, states.FAILED, error={"code": error.code, "message": error.message})
            return
        await self._store.started(job_id, saq_job.attempts, len(document.sentences))
        heartbeat = asyncio.ensure_future(self._heartbeat(saq_job))
        log = logger.bind(job_id=job_id)
        log.info("job attempt {} of {} sentences", saq_job.attempts, len(document.sentences))
        try:
            await self._sentences(record, document, saq_job)
            output = await self._join(record, document)
        except Cancelled:
            await self._finish(job_id, states.CANCELLED)
            return
        except asyncio.CancelledError:
            # SAQ stops the task on an abort (our cancel) or a timeout; only the first is ours to record.
            if await self._store.cancel_requested(job_id):
                await asyncio.shield(self._finish(job_id, states.CANCELLED))
            raise
        except TTSError as error:  # the request itself cannot be spoken: retrying will not help
            log.warning("job failed: {}", error.message)
            await self._finish(job_id, states.FAILED, error={"code": error.code, "message": error.message})
            return
        except Exception:
            log.exception("job attempt {} failed", saq_job.attempts)
            if saq_job.attempts >= saq_job.retries:
                await self._finish(
                    job_id, states.FAILED, error={"code": "synthesis_failed", "message": "synthesis failed"}
                )
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        started = record.started_at or time.time()
        self._metrics.job_seconds.observe(max(0.0, time.time() - started))
        await self._finish(job_id, states.COMPLETED, output=output)
        log.info("job completed: {} s of audio", output["duration_s"])

    async def _heartbeat(self, saq_job: Any) -> None:
        """Touch the SAQ job while a sentence waits or runs, so only a dead worker's job is swept."""
        interval = max(0.5, self._settings.jobs.heartbeat_s / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await saq_job.update()

    def _request(self, record: Record, text: str) -> SpeechRequest:
        """One piece as /tts parses its fields (its text format and volume too): the same key."""
        wanted = record.request
        fields = SpeechFields.model_construct(
            text=text,
            speed=wanted.get("speed"),
            voice=wanted["voice"],
            speaker=wanted.get("speaker"),
            text_format=wanted.get("text_format"),
            volume=wanted.get("volume"),
        )
        synthesis = self._settings.synthesis
        return speech_request(
            fields, default_voice=synthesis.default_voice, max_chars=synthesis.max_text_chars
        )

    async def _synthesize(self, record: Record, text: str) -> Audio | None:
        """One piece at background priority; None when it has nothing to speak."""
        delay, most = OVERLOADED_BACKOFF_S
        while True:
            try:
                return await self._speech.synthesize(self._request(record, text), background=True)
            except Overloaded:  # interactive requests hold every slot: wait for one
                await asyncio.sleep(delay)
                delay = min(delay * 2, most)
            except InvalidRequest:
                return None  # only punctuation, say: silence, as /tts would refuse it

    async def _sentences(self, record: Record, document: Document, saq_job: Any) -> None:
        job_id = record.id
        total = len(document.sentences)
        cursor = (await self._store.get(job_id) or record).sentences_done
        for index in range(cursor, total):
            if await self._store.cancel_requested(job_id):
                raise Cancelled
            began = time.perf_counter()
            audio = await self._synthesize(record, document.sentences[index])
            fresh = audio is not None and audio.tier == "miss"
            piece = {
                "key": audio.key if audio is not None else None,
                "duration_s": round(audio.duration_s, 6) if audio is not None else 0.0,
                "synthesized": fresh,
                "attempt": saq_job.attempts,
            }
            if not await self._store.append_piece(job_id, index, piece):
                if await self._store.get(job_id) is None:
                    raise Cancelled  # deleted meanwhile: stop quietly
                raise RuntimeError(f"job {job_id}: sentence {index} was recorded by another attempt")
            self._metrics.job_sentences.labels("synthesized" if fresh else "cached").inc()
            self._metrics.job_sentence_seconds.inc(time.perf_counter() - began)
            with contextlib.suppress(Exception):
                await saq_job.update(progress=(index + 1) / total)

    async def _piece_pcm(
        self, record: Record, document: Document, index: int, piece: dict[str, Any]
    ) -> bytes:
        if piece["key"] is None:
            return b""
        try:
            audio = await self._speech.audio(piece["key"])
        except NotFound:  # evicted from every tier since: make it again (a rare second synthesis)
            found = await self._synthesize(record, document.sentences[index])
            if found is None:
                return b""
            audio = found
        return bytes(parse_wav(audio.wav)[1])

    async def _join(self, record: Record, document: Document) -> dict[str, Any]:
        """One WAV from the pieces under the job's key, one per segment under its own key, and
        the word timings of both where the sentences have them; the segments' times."""
        pieces = await self._store.pieces(record.id)
        voice = self._speech.catalog.get(record.request["voice"])
        rate = voice.sample_rate
        # The pauses of the text front-end: a paragraph's (or heading's) end is longer than a
        # sentence's (which is 0 by default, as in Piper: the voice's own trailing silence).
        synthesis = self._settings.synthesis
        sentence_gap = silence(rate, synthesis.sentence_silence_s)
        paragraph_gap = silence(rate, synthesis.paragraph_silence_s)
        segment_starts = {segment.first for segment in document.segments}
        pcms: list[bytes] = []
        gaps: list[bytes] = []  # before each piece
        for index, piece in enumerate(pieces):
            gaps.append(b"" if index == 0 else paragraph_gap if index in segment_starts else sentence_gap)
            pcms.append(await self._piece_pcm(record, document, index, piece))
        words = [await self._piece_words(piece) for piece in pieces]
        key = output_key(record.id)
        starts, ends, timed = await self._store_span(key, rate, pcms, gaps, words, 0, len(pieces))
        segments = []
        for number, segment in enumerate(document.segments):
            last = segment.first + segment.count
            await self._store_span(
                segment_key(record.id, number), rate, pcms, gaps, words, segment.first, last
            )
            segments.append(
                {
                    "kind": segment.kind,
                    "text_start": segment.start,
                    "text_end": segment.end,
                    "start_s": round(starts[segment.first], 3),
                    "end_s": round(ends[last - 1], 3),
                    "key": segment_key(record.id, number),
                }
            )
        position = sum(len(gap) + len(pcm) for gap, pcm in zip(gaps, pcms, strict=True))
        return {
            "key": key,
            "duration_s": round(duration_s(rate, position), 3),
            "sample_rate": rate,
            "segments": segments,
            "captions": timed,
        }

    async def _piece_words(self, piece: dict[str, Any]) -> list[dict[str, Any]] | None:
        """A sentence's stored word timings (None where its voice gives none)."""
        return None if piece["key"] is None else await self._speech.words(piece["key"])

    async def _store_span(
        self,
        key: str,
        rate: int,
        pcms: list[bytes],
        gaps: list[bytes],
        words: list[list[dict[str, Any]] | None],
        first: int,
        end: int,
    ) -> tuple[list[float], list[float], bool]:
        """Store pieces [first, end) as one WAV under `key` (and their words, shifted to its
        time line, where every piece has them); each piece's start and end in it."""
        chunks: list[bytes] = []
        starts: list[float] = []
        ends: list[float] = []
        shifted: list[dict[str, Any]] = []
        position = 0
        for index in range(first, end):
            if index > first and gaps[index]:
                chunks.append(gaps[index])
                position += len(gaps[index])
            offset = duration_s(rate, position)
            starts.append(offset)
            # Character offsets stay those of the sentence: a job's captions need words and times.
            shifted += [
                {**word, "start_s": word["start_s"] + offset, "end_s": word["end_s"] + offset}
                for word in words[index] or []
            ]
            chunks.append(pcms[index])
            position += len(pcms[index])
            ends.append(duration_s(rate, position))
        if not await self._speech.cache.put(key, wav_bytes(rate, b"".join(chunks))):
            raise RuntimeError("the joined audio could not be stored durably")
        timed = all(words[index] is not None for index in range(first, end))
        if timed:
            await self._speech.cache.put(key, json.dumps(shifted).encode(), WORDS_SUFFIX)
        # Indexed by piece number, as the caller's segments are.
        return [0.0] * first + starts, [0.0] * first + ends, timed

    async def _finish(self, job_id: str, status: str, **details: Any) -> None:
        if await self._store.finish(job_id, status, self._settings.jobs.ttl_s, **details):
            self._metrics.jobs.labels(status).inc()
            await self._on_finished(job_id)
