"""Faults degrade the service and never break it: Redis dead, slow or corrupt, storage unwritable,
clients vanishing mid-stream. Each test uses real processes and fails if the behaviour regresses."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from server.audio.pcm import parse_wav
from tests.conftest import free_port, query, unique_text

ADMIN_KEY = "fault-tests-admin-key-0123456789"
FAST_REDIS = {
    "TTS__REDIS__TIMEOUT_S": "0.25",
    "TTS__REDIS__BREAKER_FAILURES": "2",
    "TTS__REDIS__BREAKER_RESET_S": "0.5",
}
DATA_COMMANDS = (b"\r\nGET\r\n", b"\r\nSET\r\n", b"\r\nEVAL\r\n", b"\r\nEXISTS\r\n", b"\r\nPEXPIRE\r\n")
LONG_TEXT = " ".join(
    f"This is sentence number {n} of a long text, which keeps the synthesizer busy for a while."
    for n in range(12)
)


class DelayProxy:
    """A TCP proxy in front of Redis that holds every byte for `delay` seconds (0: pass through)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = 0.0
        self.forwarded_chunks = 0
        self.commands = 0  # cache reads and writes (connection set-up and health pings aside)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._writers: list[asyncio.StreamWriter] = []
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if count:
                    self.forwarded_chunks += 1
                    self.commands += sum(data.count(name) for name in DATA_COMMANDS)
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, client_reader, client_writer) -> None:
        self._writers.append(client_writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers.append(upstream_writer)
        with contextlib.suppress(asyncio.CancelledError):  # shutdown: end quietly
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer, count=True),
                self._pipe(upstream_reader, client_writer, count=False),
            )


def runtime(server) -> dict:
    return server.get("/admin/runtime", headers={"X-API-Key": ADMIN_KEY}).json()


def wait_until(condition, timeout: float = 15, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def test_redis_killed_during_traffic_causes_no_errors_and_is_used_again_when_back(make_server, make_redis):
    redis = make_redis()
    server = make_server({"TTS__REDIS__URL": redis.url, **FAST_REDIS})
    texts = [unique_text("Steady") for _ in range(4)]
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            text = texts[n % len(texts)] if n % 3 else unique_text("Fresh")
            statuses[server.get("/tts?" + query(text=text), timeout=30).status] += 1
            n += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(1.5)
    assert redis.proc is not None
    redis.proc.kill()
    redis.proc.wait(5)
    time.sleep(2.5)
    degraded = server.get("/readyz").json()
    stop.set()
    worker.join(60)

    assert set(statuses) == {200}, statuses
    assert degraded["redis"] == "degraded"
    assert server.get("/readyz").status == 200  # Redis down never makes the server unready

    redis.start()  # same port, empty
    key = None

    def stored_again() -> bool:
        nonlocal key
        key = server.get("/tts?" + query(text=unique_text("Back"))).json()["hash"]
        return redis.client().exists(f"tts:audio:{key}.wav") == 1

    assert wait_until(stored_again, timeout=10, interval=0.3)
    assert server.get("/readyz").json()["redis"] == "ok"


def test_slow_redis_costs_at_most_its_timeout_and_the_breaker_stops_calling_it(make_server, make_redis):
    redis = make_redis()
    with DelayProxy(redis.port) as proxy:
        server = make_server(
            {
                "TTS__REDIS__URL": f"redis://127.0.0.1:{proxy.port}/0",
                **FAST_REDIS,
                "TTS__REDIS__BREAKER_RESET_S": "3",
            }
        )
        baseline = time.monotonic()
        server.get("/tts?" + query(text=unique_text("Baseline")))
        healthy_s = time.monotonic() - baseline

        proxy.delay = 5.0  # far beyond the 0.25 s timeout: Redis is effectively hung
        durations = []
        for _ in range(4):
            started = time.monotonic()
            assert server.get("/tts?" + query(text=unique_text("Slow"))).status == 200
            durations.append(time.monotonic() - started)
        commands_before = proxy.commands
        for _ in range(4):
            assert server.get("/tts?" + query(text=unique_text("Open breaker"))).status == 200
        calls_skipped = proxy.commands == commands_before

        proxy.delay = 0.0
        time.sleep(3.2)  # the breaker's reset period: Redis is probed again
        key = server.get("/tts?" + query(text=unique_text("Recovered"))).json()["hash"]

    # A hung Redis costs each request at most a few timeouts (lookup, lock, store), never the
    # ~58 s that redis-py's default timeouts and retries would take.
    assert max(durations) < healthy_s + 3 * 0.5 + 2.0, durations
    assert calls_skipped
    assert redis.client().exists(f"tts:audio:{key}.wav") == 1


def test_corrupt_bytes_in_redis_are_a_miss_and_get_overwritten(make_server, make_redis):
    redis = make_redis()
    first = make_server({"TTS__REDIS__URL": redis.url})
    text = unique_text("Corrupted")
    key = first.get("/tts?" + query(text=text)).json()["hash"]
    client = redis.client()
    good = client.get(f"tts:audio:{key}.wav")
    # Truncated, as a crashed writer might leave it.
    client.set(f"tts:audio:{key}.wav", good[: len(good) // 2])

    fresh = make_server({"TTS__REDIS__URL": redis.url})  # empty L1 and its own disk
    assert fresh.get(f"/audio/{key}.wav").status == 404  # never served
    answer = fresh.get("/tts?" + query(text=text)).json()
    audio = fresh.get(f"/audio/{key}.wav")

    assert answer["cache"] == "miss"
    assert audio.status == 200
    parse_wav(audio.body)
    assert client.get(f"tts:audio:{key}.wav")[:4] == b"TTS1"
    assert len(client.get(f"tts:audio:{key}.wav")) > len(good) // 2


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs: the first WAV fills it. Mounting needs root (CI runs as root)."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs to fill needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], check=True)
    (mount_point / "filler").write_bytes(b"\0" * 60 * 1024)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(params=["unwritable", "full"])
def broken_storage(request, tmp_path: Path) -> str:
    if request.param == "unwritable":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the audio directory should be")
        return str(blocker / "audio")
    return str(request.getfixturevalue("full_disk") / "audio")


def test_broken_storage_keeps_streams_working_and_tts_honest(make_server, broken_storage):
    server = make_server({"TTS__STORAGE__DIR": broken_storage})
    text = unique_text("Nowhere to store")

    stream = server.get("/tts/stream?" + query(text=text))
    answer = server.get("/tts?" + query(text=unique_text("Needs a file")))

    assert stream.status == 200 and len(stream.body) > 10_000
    assert answer.status == 503
    assert answer.json()["error"]["code"] == "storage_unavailable"
    assert answer.headers["Retry-After"] == "5"
    assert server.metric("tts_storage_write_errors_total") >= 1
    assert "audio file write failed" in server.logs()


def test_broken_storage_with_redis_still_returns_urls_that_work(make_server, make_redis, broken_storage):
    redis = make_redis()
    server = make_server({"TTS__STORAGE__DIR": broken_storage, "TTS__REDIS__URL": redis.url})
    answer = server.get("/tts?" + query(text=unique_text("Kept in Redis")))
    assert answer.status == 200
    other = make_server({"TTS__REDIS__URL": redis.url})
    audio = other.get(answer.json()["audio_url"].removeprefix(server.base))
    assert audio.status == 200
    parse_wav(audio.body)


def _open_stream_and_drop(base_port: int, text: str, read_bytes: int) -> None:
    sock = socket.create_connection(("127.0.0.1", base_port), timeout=30)
    sock.sendall(f"GET /tts/stream?{query(text=text)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = b""
    with contextlib.suppress(OSError):
        while len(received) < read_bytes:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    sock.close()


def test_mass_disconnects_leak_no_tasks_slots_or_redis_connections(make_server, make_redis):
    redis = make_redis()
    with DelayProxy(redis.port) as proxy:
        proxy.delay = 0.1  # Redis calls are in flight when many of the clients vanish
        server = make_server(
            {
                "TTS__REDIS__URL": f"redis://127.0.0.1:{proxy.port}/0",
                "TTS_ADMIN_API_KEYS": ADMIN_KEY,
                "TTS__REDIS__TIMEOUT_S": "1",
            }
        )
        before = runtime(server)
        threads = [
            threading.Thread(
                target=_open_stream_and_drop,
                args=(server.port, f"{unique_text('Dropped')} {LONG_TEXT}", read_bytes),
            )
            for read_bytes in [0, 1, 2000, 50_000] * 4
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        def settled() -> bool:
            state = runtime(server)
            return (
                state["syntheses"] == 0
                and state["open_streams"] == 0
                and state["scheduler"] == {"admitted": 0, "queued": 0, "running": 0}
                and state["in_flight_requests"] == 1
                and state["redis"]["pool"]["in_use"] <= before["redis"]["pool"]["in_use"]
            )

        assert wait_until(settled, timeout=30), json.dumps(runtime(server))
        after = runtime(server)
        proxy.delay = 0.0
        text = unique_text("After the storm")
        streamed = server.get("/tts?" + query(text=text)).json()
        wav = server.get(f"/audio/{streamed['hash']}.wav").body
        stream = server.get("/tts/stream?" + query(text=text))

    assert after["asyncio_tasks"] <= before["asyncio_tasks"] + 2
    assert stream.body == bytes(parse_wav(wav)[1])
    assert server.metric("tts_inferences_total") < 16 * 13  # dropped streams stopped synthesizing


def test_sigterm_during_a_redis_outage_stops_the_server_cleanly_and_promptly(make_server, make_redis):
    redis = make_redis()
    server = make_server({"TTS__REDIS__URL": redis.url})
    assert server.get("/tts?" + query(text=unique_text("Before the outage"))).status == 200
    redis.stop()
    server.signal(signal.SIGTERM)
    assert server.proc is not None
    server.proc.wait(15)  # well within the 30 s grace: nothing waits on the missing Redis

    assert server.proc.returncode == 0
    assert "Traceback" not in server.log_path.read_text()


def test_sigterm_lets_a_stream_in_flight_finish(make_server):
    server = make_server({"TTS__SERVER__GRACEFUL_TIMEOUT_S": "30"})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/tts/stream?" + query(text=f"{unique_text('Finishing')} {LONG_TEXT}"))
    response = conn.getresponse()
    first = response.read1(4096)
    server.signal(signal.SIGTERM)
    rest = response.read()
    key = response.headers["X-Audio-Hash"]
    conn.close()
    assert server.proc is not None
    server.proc.wait(30)

    assert len(first) + len(rest) > 22050 * 2 * 10  # well over ten seconds of audio arrived
    assert (len(first) + len(rest)) % 2 == 0
    assert server.proc.returncode == 0
    assert key
