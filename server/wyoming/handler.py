"""One Wyoming connection: events in, speech requests to the `SpeechService`, audio events out.

The connection reads events while a worker task speaks the texts it queued, one after another:
`synthesize` queues its text; a streaming session (`synthesize-start`, `-chunk`s, `-stop`)
queues each sentence as soon as it is complete, so its audio is sent while the language model is
still writing. Each sentence is its own speech request, cached as a `/tts` of that text would be.
A connection that goes away cancels its synthesis, as an HTTP disconnect does; a connection that
breaks the protocol is closed, and nothing else is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from loguru import logger
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from server.errors import InvalidRequest, NotReady, Overloaded, RateLimited, StorageUnavailable, TTSError
from server.ratelimit import REQUESTS
from server.request import SpeechRequest, parse_speech_request
from server.schemas import SpeechFields
from server.text.clean import normalize_text
from server.wyoming.events import ProtocolError, read_event
from server.wyoming.sentences import split_sentences
from server.wyoming.voices import describe, select_voice

if TYPE_CHECKING:
    from server.wyoming.server import WyomingServer

E = TypeVar("E")
SAMPLE_WIDTH: Final = 2  # s16le
CHANNELS: Final = 1
MAX_QUEUED: Final = 32  # sentences waiting to be spoken; past it the connection stops reading
# A 503 of the HTTP API is `busy` here, with the retry delay in the text.
BUSY: Final = (Overloaded, NotReady, StorageUnavailable)
KNOWN_TYPES: Final = frozenset(
    {"describe", "ping", "synthesize", "synthesize-start", "synthesize-chunk", "synthesize-stop"}
)
OWN_LABELS: Final = frozenset({"connection", "invalid"})  # what happened to a connection, not an event


class ConnectionEnded(Exception):
    """The connection cannot go on (a broken audio stream, a peer that stopped reading)."""


@dataclass(frozen=True)
class _Speak:
    """A text to speak with a voice; `ends` closes the audio (and a streaming session)."""

    text: str
    voice: str
    speaker: str | None
    ends: bool
    streaming: bool


def _error_event(error: TTSError) -> Event:
    if isinstance(error, BUSY):
        retry = error.retry_after_s or 1
        return Error(text=f"{error.message} (retry after {retry} s)", code="busy").event()
    retry_after = error.headers.get("Retry-After")
    text = f"{error.message} (retry after {retry_after} s)" if retry_after else error.message
    return Error(text=text, code=error.code).event()


def _chunk(rate: int, pcm: bytes) -> Event:
    return AudioChunk(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS, audio=pcm).event()


class Connection(AsyncEventHandler):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, owner: WyomingServer
    ) -> None:
        super().__init__(reader, writer)
        self._owner = owner
        self._services = owner.services
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.request_id = uuid.uuid4().hex
        self._log = logger.bind(request_id=self.request_id, client=self.peer)
        self._queue: asyncio.Queue[_Speak] = asyncio.Queue(MAX_QUEUED)
        self._pending = 0  # texts queued or being spoken: the connection is busy, not idle
        self._session: tuple[str, str | None] | None = None  # (voice, speaker) of an open stream
        self._session_text = ""  # streamed text not yet a complete sentence
        self._session_open = False  # from synthesize-start until synthesize-stopped is sent
        self._audio_open = False  # audio-start sent, audio-stop not yet
        self._worker: asyncio.Future[None] | None = None

    # -- reading -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Read events until the peer leaves, breaks the protocol or stays idle too long."""
        if not self._owner.allows(self.peer):
            self._count("connection", "refused")
            self._log.warning("wyoming connection refused: {} is not in wyoming.allowed_networks", self.peer)
            self.writer.close()
            return
        self._log.info("wyoming connection from {}", self.peer)
        worker = self._worker = asyncio.ensure_future(self._work())
        reading: asyncio.Future[Event | None] | None = None
        idle_s = self._owner.settings.idle_timeout_s
        try:
            while True:
                reading = asyncio.ensure_future(read_event(self.reader, self._owner.bounds))
                while not reading.done():
                    await asyncio.wait({reading, worker}, timeout=idle_s, return_when=asyncio.FIRST_COMPLETED)
                    if worker.done():
                        return  # the audio could not be sent: nothing more to do here
                    if not reading.done() and not self._pending:
                        self._count("connection", "idle")
                        self._log.info("wyoming connection idle for {} s: closed", idle_s)
                        return
                event = reading.result()
                reading = None
                if event is None or not await self.handle_event(event):
                    return
        except ProtocolError as exc:
            self._count("invalid", "closed")
            self._log.warning("wyoming connection closed: {}", exc)
        except (ConnectionError, ConnectionEnded):
            pass  # gone; the cancellations below stop its synthesis
        finally:
            for task in (reading, worker):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            self._services.lifecycle.in_flight -= self._pending
            self._pending = 0
            self.writer.close()
            self._log.info("wyoming connection closed")

    def _count(self, event_type: str, outcome: str) -> None:
        label = event_type if event_type in KNOWN_TYPES | OWN_LABELS else "unknown"
        self._services.metrics.wyoming_events.labels(label, outcome).inc()

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; False closes the connection."""
        try:
            outcome = await self._dispatch(event)
        except TTSError as error:
            self._count(event.type, "error")
            await self._send(_error_event(error))
            return True
        self._count(event.type, outcome)
        if outcome == "unsupported":
            await self._send(Error(text="unsupported event type", code="unsupported_event").event())
            return False
        return True

    async def _dispatch(self, event: Event) -> str:
        if Describe.is_type(event.type):
            await self._describe()
        elif Ping.is_type(event.type):
            await self._send(Pong(text=Ping.from_event(event).text).event())
        elif Synthesize.is_type(event.type):
            if self._session_open:
                return "ignored"  # Home Assistant sends the whole text too, for servers without streaming
            synthesize = self._parse(Synthesize.from_event, event)
            voice, speaker = self._voice(synthesize.voice)
            await self._admit()
            await self._queue_text(synthesize.text, voice, speaker, ends=True, streaming=False)
        elif SynthesizeStart.is_type(event.type):
            if self._session_open:
                raise InvalidRequest("a streaming synthesis is already open on this connection")
            start = self._parse(SynthesizeStart.from_event, event)
            self._session = self._voice(start.voice)
            await self._admit()
            self._session_open = True
            self._session_text = ""
        elif SynthesizeChunk.is_type(event.type):
            if self._session is None:
                return "ignored"
            chunk = self._parse(SynthesizeChunk.from_event, event)
            await self._stream_text(chunk.text)
        elif SynthesizeStop.is_type(event.type):
            if self._session is None:
                return "ignored"
            voice, speaker = self._session
            self._session = None
            rest, self._session_text = self._session_text, ""
            await self._queue_text(rest, voice, speaker, ends=True, streaming=True)
        else:
            return "unsupported"
        return "ok"

    @staticmethod
    def _parse(parse: Callable[[Event], E], event: Event) -> E:
        """An event's data as the package's dataclass; wrong shapes are a client error, not a crash."""
        try:
            parsed = parse(event)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise InvalidRequest(f"malformed {event.type} event") from None
        text = getattr(parsed, "text", "")
        voice = getattr(parsed, "voice", None)
        fields = () if voice is None else (voice.name, voice.language, voice.speaker)
        if not isinstance(text, str) or not all(f is None or isinstance(f, str) for f in fields):
            raise InvalidRequest(f"malformed {event.type} event")
        return parsed

    def _voice(self, wanted: SynthesizeVoice | None) -> tuple[str, str | None]:
        catalog = self._services.catalog
        if not catalog.ready and wanted is not None and (wanted.name or wanted.language):
            # Only loaded voices are known: a name asked for during loading is not yet unknown.
            raise NotReady(catalog.problem or "voices are still loading", retry_after_s=2)
        voice = select_voice(catalog.infos(), catalog.default_voice, wanted)
        return voice, wanted.speaker if wanted is not None else None

    async def _admit(self) -> None:
        """The HTTP API's gates: not while draining, and the client's request bucket."""
        if self._services.lifecycle.draining:
            raise NotReady("the server is shutting down", retry_after_s=1)
        limiter = self._services.limiter
        if limiter.enabled:
            decision = await limiter.take(self.client, REQUESTS)
            if not decision.allowed:
                raise RateLimited("too many requests; slow down", headers=decision.headers())

    @property
    def client(self) -> str:
        return f"ip:{self.peer}"

    async def _describe(self) -> None:
        catalog = self._services.catalog
        if not catalog.ready:
            raise NotReady(catalog.problem or "voices are still loading", retry_after_s=2)
        await self._send(describe(catalog.infos(), self._owner.settings).event())

    async def _stream_text(self, text: str) -> None:
        """Queue every sentence the streamed text now completes; keep the unfinished rest."""
        assert self._session is not None
        voice, speaker = self._session
        espeak_voice = self._services.catalog.get(voice).espeak_voice
        sentences, rest = split_sentences(self._session_text + text, espeak_voice)
        limit = self._services.settings.synthesis.max_text_chars
        if len(rest) > limit:
            # No sentence end in sight: speak up to the last word break rather than grow forever.
            cut = rest.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            sentences.append(rest[:cut])
            rest = rest[cut:].lstrip()
        self._session_text = rest
        for sentence in sentences:
            await self._queue_text(sentence, voice, speaker, ends=False, streaming=True)

    async def _queue_text(
        self, text: str, voice: str, speaker: str | None, *, ends: bool, streaming: bool
    ) -> None:
        job = _Speak(text, voice, speaker, ends, streaming)
        if not streaming:
            self._request(job)  # a bad one-shot request is answered now, before anything is queued
        self._pending += 1
        self._services.lifecycle.in_flight += 1  # the drain waits for it like an HTTP request
        assert self._worker is not None
        putting = asyncio.ensure_future(self._queue.put(job))
        # A full queue waits for the worker; a worker that ended (its peer stopped reading) never
        # makes room, so that wait must end with it.
        await asyncio.wait({putting, self._worker}, return_when=asyncio.FIRST_COMPLETED)
        if not putting.done():
            putting.cancel()
            raise ConnectionEnded

    def _request(self, job: _Speak) -> SpeechRequest:
        synthesis = self._services.settings.synthesis
        fields: dict[str, object] = {"text": job.text, "voice": job.voice}
        if job.speaker is not None:
            fields["speaker"] = job.speaker
        return parse_speech_request(
            fields,
            default_voice=synthesis.default_voice,
            max_chars=synthesis.max_text_chars,
            model=SpeechFields,
        )

    # -- speaking ----------------------------------------------------------------------------

    async def _work(self) -> None:
        """Speak the queued texts in order, one at a time; errors go back as `error` events."""
        while True:
            job = await self._queue.get()
            try:
                await self._speak(job)
            except TTSError as error:
                self._count("synthesize-chunk" if job.streaming else "synthesize", "error")
                await self._send(_error_event(error))
                if job.streaming or self._audio_open:
                    # Part of the answer is lost: it cannot be mended, so the connection ends here.
                    raise ConnectionEnded from None
            finally:
                self._pending -= 1
                self._services.lifecycle.in_flight -= 1
            if job.ends and job.streaming:
                self._session_open = False

    async def _speak(self, job: _Speak) -> None:
        if normalize_text(job.text):
            try:
                await self._say(job)
            except InvalidRequest as error:
                if not job.streaming:
                    raise
                # A streamed piece with nothing to speak (a stray symbol between sentences) is
                # skipped: the rest of the answer still plays.
                self._log.info("wyoming: a streamed piece was skipped: {}", error.message)
        if job.ends:
            if not self._audio_open:  # a streaming session that had nothing to say
                rate = next((v.sample_rate for v in self._services.catalog.infos() if v.id == job.voice), 0)
                await self._send(AudioStart(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS).event())
            await self._send(AudioStop().event())
            self._audio_open = False
            if job.streaming:
                await self._send(SynthesizeStopped().event())

    async def _say(self, job: _Speak) -> None:
        started = time.perf_counter()
        request = self._request(job)
        stream = await self._services.speech.stream(request, self.client)
        sent = 0
        try:
            rate = stream.sample_rate
            chunks = stream.chunks()
            # As /tts/stream: errors before the first audio (nothing to speak, a failed synthesis)
            # still leave the audio unopened, so a one-shot request gets a clean `error`.
            first = await anext(chunks, b"")
            if not self._audio_open:
                await self._send(AudioStart(rate=rate, width=SAMPLE_WIDTH, channels=CHANNELS).event())
                self._audio_open = True
            if first:
                await self._send(_chunk(rate, first))
                sent += len(first)
            async for chunk in chunks:
                if chunk:
                    await self._send(_chunk(rate, chunk))
                    sent += len(chunk)
        finally:
            stream.close()
        self._log.bind(
            voice=request.voice,
            text_chars=len(request.text),
            cache=stream.tier,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        ).info("wyoming synthesize: {} bytes of audio", sent)

    async def _send(self, event: Event) -> None:
        """Write one event; a peer that stops reading for the idle timeout is cut off."""
        try:
            await asyncio.wait_for(self.write_event(event), self._owner.settings.idle_timeout_s)
        except TimeoutError:
            raise ConnectionEnded from None
