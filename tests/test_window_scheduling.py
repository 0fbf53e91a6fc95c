"""Spec of window scheduling in the speech service, on the real bundled voice, in this process.

The services of one worker are built as the worker builds them (`Services.build`), with Redis off
and storage in a temporary folder; only the scheduler is a subclass that writes down every
inference call it makes (which streams' work it carried, and when it started and ended), so the
tests can assert the order of work itself rather than wall-clock ratios, which a shared 2-core
machine makes noisy. Each stream's text is one long sentence (one encoder job, then many windows),
so "its current sentence" is its whole text, and readers take every chunk at once, which keeps
every playing stream's windows queued: the hardest case for a newcomer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.request import parse_speech_request
from server.services import Services
from server.settings import Settings, load_settings
from server.synthesis.scheduler import Scheduler
from tests.conftest import ROOT

# About 40 words without a comma: one sentence of roughly 8 s of audio, 8 or more windows.
SENTENCE = (
    "The old lighthouse keeper number {n} climbed the winding stairs every evening before sunset "
    "carrying a heavy lantern and a small leather notebook in which he carefully wrote down the "
    "colour of the sky and the direction of the wind and the names of passing ships"
)


@dataclass(frozen=True)
class Call:
    """One inference call: its kind ("encode", "window", or "start": a lone new stream's encoder
    and first window), the streams it served, when it ran."""

    kind: str
    streams: tuple[int, ...]
    deadline: float  # its leading job's (the scheduler's clock: the IOLoop's time)
    started: float
    ended: float


class RecordingScheduler(Scheduler):
    """The real scheduler; every call it makes is also written down, in the order calls start."""

    def __init__(self, stream_of: Callable[[Any], int], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[Call] = []
        self.submitted: list[tuple[float, str, int, float]] = []  # (when, kind, stream, deadline)
        self._stream_of = stream_of
        self._lock = threading.Lock()

    async def run_batched(
        self,
        run_many: Callable[[list[Any]], Sequence[Any]],
        item: Any,
        deadline: float,
        *,
        key: Hashable,
        size: int,
        limit: int,
        background: bool = False,
    ) -> Any:
        kind = key[0] if isinstance(key, tuple) else str(key)
        self.submitted.append((time.perf_counter(), kind, self._stream_of(item), deadline))

        def recorded(items: list[Any]) -> Sequence[Any]:
            started = time.perf_counter()
            try:
                return run_many(items)
            finally:
                streams = tuple(self._stream_of(i) for i in items)
                call = Call(kind, streams, deadline, started, time.perf_counter())
                with self._lock:
                    self.calls.append(call)

        return await super().run_batched(
            recorded, item, deadline, key=key, size=size, limit=limit, background=background
        )


class Harness:
    """A worker's services with a recording scheduler, and streams of numbered sentences."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services = Services.build(settings)
        self.ids: dict[tuple[int, ...], int] = {}  # phoneme ids of each stream's sentence
        synthesis = settings.synthesis
        self.scheduler = RecordingScheduler(
            self.stream_of,
            synthesis.concurrency,
            synthesis.max_active_requests,
            window_s=synthesis.batch_window_ms / 1000,
            max_padding=synthesis.batch_max_padding,
        )
        self.services.scheduler.shutdown()
        self.services.scheduler = self.services.speech.scheduler = self.scheduler

    def stream_of(self, item: Any) -> int:
        ids = item[0] if isinstance(item, tuple) else item.ids  # an encoder row or a window's part
        return self.ids.get(tuple(ids), -1)

    async def start(self) -> None:
        await self.services.start()
        assert self.services.catalog.ready
        voice = self.services.catalog.get(self.settings.synthesis.default_voice)
        assert voice.windows is not None
        for n in range(8):
            (phonemes,) = voice.phonemize(SENTENCE.format(n=n))
            self.ids[tuple(voice.phoneme_ids(phonemes))] = n

    async def stream(self, n: int) -> AsyncIterator[tuple[float, bytes]]:
        """Stream n's chunks as they come, each with the moment it arrived."""
        synthesis = self.settings.synthesis
        request = parse_speech_request(
            {"text": SENTENCE.format(n=n)},
            default_voice=synthesis.default_voice,
            max_chars=synthesis.max_text_chars,
        )
        stream = await self.services.speech.stream(request)
        try:
            async for chunk in stream.chunks():
                yield time.perf_counter(), chunk
        finally:
            stream.close()

    async def close(self) -> None:
        await self.services.close()


ENCODES = ("encode", "start")  # the calls that run a stream's encoder


def make_settings(tmp_path: Path, **synthesis: str) -> Settings:
    env = {
        "TTS__STORAGE__DIR": str(tmp_path / "audio"),
        "TTS__SYNTHESIS__MODELS_DIR": str(tmp_path / "models"),
        "TTS__SYNTHESIS__PROVIDER": "cpu",
        "TTS__LIMITS__ENABLED": "false",
        **{f"TTS__SYNTHESIS__{key.upper()}": value for key, value in synthesis.items()},
    }
    (tmp_path / "models").mkdir()
    return load_settings(ROOT / "config.yaml", env)


async def play(harness: Harness, n: int, arrivals: list[float], started: asyncio.Event, chunks: int) -> None:
    """A listener who takes every chunk at once; `started` is set after its first `chunks`."""
    async for at, _ in harness.stream(n):
        arrivals.append(at)
        if len(arrivals) == chunks:
            started.set()


def test_a_new_streams_first_chunk_overtakes_the_sentences_of_three_playing_streams(tmp_path):
    async def scenario() -> tuple[list[Call], list[tuple[float, str, int, float]], float, int]:
        harness = Harness(make_settings(tmp_path))
        await harness.start()
        try:
            playing: list[asyncio.Task[None]] = []
            for n in range(3):
                started = asyncio.Event()
                playing.append(asyncio.ensure_future(play(harness, n, [], started, 2)))
                await started.wait()  # each is playing (two chunks in) before the next starts
            newcomer = harness.stream(3)
            first_at, _ = await newcomer.__anext__()
            await newcomer.aclose()
            await asyncio.gather(*playing)
            scheduler = harness.scheduler
            return scheduler.calls, scheduler.submitted, first_at, harness.settings.synthesis.concurrency
        finally:
            await harness.close()

    calls, queued, first_at, concurrency = asyncio.run(scenario())

    encode_queued, _, _, arrival = next(q for q in queued if q[1] in ENCODES and q[2] == 3)
    encode = next(c for c in calls if c.kind in ENCODES and 3 in c.streams)
    first = (
        encode if encode.kind == "start" else next(c for c in calls if c.kind == "window" and 3 in c.streams)
    )
    assert encode_queued < encode.started <= first.started < first_at
    # Once the newcomer's encoder is queued, it waits only for the call already running (one window
    # per inference slot): its jobs carry its arrival as their deadline, so a playing stream's
    # window may go first only if that stream is more urgent still (about to run dry), which on a
    # machine keeping up is none of them. So it waits about one window, never for a sentence.
    running = [c for c in calls if 3 not in c.streams and c.started < encode_queued < c.ended]
    assert len(running) <= concurrency
    overtaking = [c for c in calls if 3 not in c.streams and encode_queued < c.started < first.started]
    late = [(c.streams, c.deadline - arrival) for c in overtaking if c.deadline > arrival]
    assert late == []
    assert first.deadline == arrival
    # And each playing stream was mid-sentence: its sentence still had windows to make after the
    # newcomer's first audio, so that audio did not wait for any of their sentences to finish.
    for n in range(3):
        later = [c for c in calls if n in c.streams and c.kind == "window" and c.started > first_at]
        assert len(later) >= 1, f"stream {n} finished its sentence before the newcomer's first audio"


def test_windows_of_two_concurrent_streams_share_one_inference_call_when_batching_is_on(tmp_path):
    async def scenario() -> list[Call]:
        # A batching window long enough for the other stream's next window to be queued.
        harness = Harness(make_settings(tmp_path, batch_max_size="4", batch_window_ms="200"))
        await harness.start()
        try:
            voice = harness.services.catalog.get(harness.settings.synthesis.default_voice)
            assert voice.batch_limit == 4
            done = [asyncio.Event(), asyncio.Event()]
            await asyncio.gather(*(play(harness, n, [], done[n], 10_000) for n in range(2)))
            return harness.scheduler.calls
        finally:
            await harness.close()

    calls = asyncio.run(scenario())

    shared = [c for c in calls if c.kind == "window" and set(c.streams) == {0, 1}]
    assert shared, [(c.kind, c.streams) for c in calls]
    assert all(len(c.streams) == 2 for c in shared)  # one window of each stream per shared call


def test_streams_starting_together_get_first_windows_long_enough_to_play_while_the_others_start(tmp_path):
    async def first_chunk(harness: Harness, n: int) -> tuple[float, int]:
        chunks = harness.stream(n)
        at, chunk = await chunks.__anext__()
        async for _ in chunks:  # the rest, so the stream plays on while the others start
            pass
        return at, len(chunk)

    async def scenario() -> tuple[list[tuple[float, int]], int, int]:
        harness = Harness(make_settings(tmp_path))
        await harness.start()
        try:
            together = await asyncio.gather(*(first_chunk(harness, n) for n in range(4)))
            _, alone = await first_chunk(harness, 4)
            voice = harness.services.catalog.get(harness.settings.synthesis.default_voice)
            assert voice.windows is not None
            small = harness.settings.synthesis.first_window_frames * voice.windows.hop * 2  # PCM bytes
            return sorted(together), alone, small
        finally:
            await harness.close()

    together, alone, small = asyncio.run(scenario())

    # Alone, a stream's first window is the small one: its first audio comes soonest.
    assert alone == small
    # The first of four to start must keep playing while the other three's encoders and first
    # windows run (they go first) and its own second window is made: a small window would run dry.
    assert together[0][1] > small


def test_a_stream_starting_alone_gets_its_encoder_and_first_window_in_one_call(tmp_path):
    async def scenario() -> tuple[list[Call], int, int]:
        harness = Harness(make_settings(tmp_path))
        await harness.start()
        try:
            chunks = harness.stream(0)
            _, first = await chunks.__anext__()
            async for _ in chunks:
                pass
            voice = harness.services.catalog.get(harness.settings.synthesis.default_voice)
            assert voice.windows is not None
            small = harness.settings.synthesis.first_window_frames * voice.windows.hop * 2  # PCM bytes
            return harness.scheduler.calls, len(first), small
        finally:
            await harness.close()

    calls, first, small = asyncio.run(scenario())

    # One call fewer before its first audio: no trip through the IOLoop between the two.
    kinds = [call.kind for call in calls if 0 in call.streams]
    assert kinds[0] == "start"
    assert set(kinds[1:]) == {"window"}
    assert first == small  # alone, its first window is the small one


def test_a_files_sentences_get_one_call_each_but_the_last_whose_word_timings_are_stored_meanwhile(tmp_path):
    async def scenario() -> list[Call]:
        harness = Harness(make_settings(tmp_path))
        await harness.start()
        try:
            synthesis = harness.settings.synthesis
            request = parse_speech_request(
                {"text": f"{SENTENCE.format(n=0)}. {SENTENCE.format(n=1)}."},
                default_voice=synthesis.default_voice,
                max_chars=synthesis.max_text_chars,
            )
            await harness.services.speech.synthesize(request)
            return harness.scheduler.calls
        finally:
            await harness.close()

    calls = asyncio.run(scenario())

    # A file is one window a sentence (nobody listens while it is made), so the encoder and that
    # window share a call; the last sentence's window runs while its word timings are stored.
    assert [call.kind for call in calls] == ["start", "encode", "window"]
