"""The process model under the real gunicorn command: drain on SIGTERM, worker replacement, limits.

Kubernetes sends SIGTERM to the container's PID 1 only, which is the gunicorn master; the master
closes its listener and forwards SIGTERM to its workers. So these tests signal the master pid
alone (`terminate_master`), never the process group as a terminal's Ctrl-C would.
"""

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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from server.audio.pcm import parse_wav
from tests.conftest import PYTHON, ROOT, ServerProcess, query, unique_text

GRACE_S = 30
LIMIT_S = 1  # body_timeout_s and idle_connection_timeout_s of the `limited` server


def terminate_master(srv: ServerProcess) -> None:
    """What the kubelet does at the end of preStop: SIGTERM to PID 1 (the master) alone."""
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGTERM)


def connection(srv: ServerProcess, timeout: float = 60) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)


def long_text(sentences: int = 25) -> str:
    """Many short sentences (one chunk each): a stream of a few seconds on a CPU."""
    return " ".join([unique_text("Shutdown"), *(f"Then line {i} follows." for i in range(2, sentences + 1))])


def logged(srv: ServerProcess, message: str) -> list[dict]:
    """The server's JSON log lines whose message starts with `message`."""
    entries = []
    for line in srv.logs().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("message", "").startswith(message):
                    entries.append(entry)
    return entries


def ready_workers(srv: ServerProcess) -> set[int]:
    return {entry["pid"] for entry in logged(srv, "ready with voices")}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def refused(srv: ServerProcess) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# -- graceful shutdown -----------------------------------------------------------------------


def test_sigterm_lets_a_stream_in_flight_finish_while_readiness_fails(make_server):
    srv = make_server(
        {"TTS__SERVER__GRACEFUL_TIMEOUT_S": str(GRACE_S), "TTS__SERVER__WORKERS": "1"}, command="gunicorn"
    )
    # A client that is already connected (as the kubelet's prober or a proxy's pool may be).
    keep_alive = connection(srv)
    keep_alive.request("GET", "/healthz")
    assert keep_alive.getresponse().read() == b'{"status":"ok"}'

    streaming = connection(srv)
    streaming.request("GET", "/tts/stream?" + query(text=long_text()))
    stream = streaming.getresponse()
    assert stream.status == 200
    key = stream.headers["X-Audio-Hash"]
    received = len(stream.read1(65536))
    assert received > 0

    terminate_master(srv)
    signalled = time.monotonic()

    def draining() -> bool:
        keep_alive.request("GET", "/readyz")
        answer = keep_alive.getresponse()
        body = json.loads(answer.read())
        return answer.status == 503 and body["status"] == "draining"

    wait_for(draining, 10, "/readyz to answer 503 draining")
    # The listener is closed: new connections are refused (the kubelet's probe fails the same
    # way as a 503 would), while the accepted ones are served to the end.
    wait_for(lambda: refused(srv), 10, "new connections to be refused")

    while chunk := stream.read(65536):  # http.client raises IncompleteRead if the stream is cut
        received += len(chunk)
    streaming.close()
    keep_alive.close()

    assert srv.proc.wait(GRACE_S) == 0
    assert time.monotonic() - signalled < GRACE_S
    logs = srv.logs()
    assert "was sent SIG" not in logs  # the worker exited by itself: no SIGKILL, no abort
    assert "terminate called" not in logs

    # The stream was complete: it is exactly the PCM of the WAV stored when it ended.
    again = make_server(workdir=srv.workdir)
    audio = again.get(f"/audio/{key}.wav")
    assert audio.status == 200
    assert audio.headers["X-Cache"] == "disk"
    assert received == len(parse_wav(audio.body)[1])


# -- worker replacement ----------------------------------------------------------------------


@dataclass
class Outcome:
    started: float  # time.time() when the request was sent, comparable with log timestamps
    path: str
    status: int | None  # None: no HTTP answer at all
    code: str | None = None


class Traffic:
    """One client thread calling /healthz and /tts in turn until stopped."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _call(self, target: str) -> Outcome:
        started = time.time()
        path = target.split("?")[0]
        try:
            resp = self.srv.get(target, timeout=30)
        except (OSError, http.client.HTTPException):
            return Outcome(started, path, None)
        code = resp.json()["error"]["code"] if resp.status >= 400 else None
        return Outcome(started, path, resp.status, code)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.outcomes.append(self._call("/healthz"))
            self.outcomes.append(self._call("/tts?" + query(text=unique_text("Replaced"))))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.mark.slow
def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(make_server):
    srv = make_server({"TTS__SERVER__WORKERS": "2"}, command="gunicorn")
    master = psutil.Process(srv.proc.pid)
    workers = {child.pid for child in master.children()}
    assert len(workers) == 2
    wait_for(lambda: ready_workers(srv) >= workers, 60, "both workers to load the voice")
    victim = min(workers)

    with Traffic(srv) as traffic:
        wait_for(lambda: len(traffic.outcomes) >= 4, 60, "traffic before the kill")
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in {c.pid for c in master.children()}, 30, "the master to reap it")
        dead_at = time.time()
        replacement = wait_for(
            lambda: {child.pid for child in master.children()} - workers, 30, "a new worker process"
        )
        (new_pid,) = replacement
        wait_for(lambda: new_pid in ready_workers(srv), 60, "the new worker to load the voice")
        ready_at_s = min(
            datetime.fromisoformat(e["time"]).timestamp()
            for e in logged(srv, "ready with voices")
            if e["pid"] == new_pid
        )
        settled = len(traffic.outcomes)
        wait_for(lambda: len(traffic.outcomes) >= settled + 8, 60, "traffic after the replacement")

    assert {child.pid for child in master.children()} == (workers - {victim}) | {new_pid}
    answered_before = [o for o in traffic.outcomes if o.started < killed_at and o.status is not None]
    assert {o.status for o in answered_before} == {200}
    # Only the one request that may have been on the killed worker goes unanswered.
    unanswered = [o for o in traffic.outcomes if o.status is None]
    assert len(unanswered) <= 1
    assert all(o.started < dead_at for o in unanswered)
    # The replacement accepts connections while it loads the voice and says so (503 not_ready,
    # retry); every other answer, from the surviving worker, is a success.
    failed = [o for o in traffic.outcomes if o.status not in (200, None)]
    for outcome in failed:
        assert (outcome.path, outcome.status, outcome.code) == ("/tts", 503, "not_ready")
        assert killed_at <= outcome.started <= ready_at_s
    assert all(o.status == 200 for o in traffic.outcomes if o.started > ready_at_s)
    assert {o.status for o in traffic.outcomes[settled:]} == {200}


# -- the HTTP server's limits and the master's footprint ---------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One gunicorn server with 1 s body and idle timeouts, shared by the tests below."""
    env = {
        "TTS__SERVER__BODY_TIMEOUT_S": str(LIMIT_S),
        "TTS__SERVER__IDLE_CONNECTION_TIMEOUT_S": str(LIMIT_S),
        "TTS__SERVER__WORKERS": "1",
    }
    srv = ServerProcess(tmp_path_factory.mktemp("limited"), env, command="gunicorn").start()
    yield srv
    srv.stop()


def closed_by_server(sock: socket.socket, timeout: float = 15) -> bytes:
    """Everything the server sent until it closed the connection (fails if it never does)."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_headers_that_never_finish_are_dropped_after_the_idle_timeout(limited):
    with socket.create_connection(("127.0.0.1", limited.port), timeout=15) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: headers never end
        assert closed_by_server(sock) == b""
    assert time.monotonic() - started >= LIMIT_S


def test_headers_dripped_byte_by_byte_do_not_hold_the_connection(limited):
    """A slowloris client: a byte now and then resets no timer; the whole header block has one."""
    closed = False
    with socket.create_connection(("127.0.0.1", limited.port), timeout=15) as sock:
        started = time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            if time.monotonic() - started > 15:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
    assert closed
    assert time.monotonic() - started >= LIMIT_S


def test_a_body_that_never_arrives_is_dropped_after_the_body_timeout(limited):
    with socket.create_connection(("127.0.0.1", limited.port), timeout=15) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /tts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"text": "Hel'
        )
        assert closed_by_server(sock) == b""
    assert time.monotonic() - started >= LIMIT_S


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(limited):
    with socket.create_connection(("127.0.0.1", limited.port), timeout=15) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = closed_by_server(sock)
    assert time.monotonic() - started >= LIMIT_S
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b'{"status":"ok"}'


def test_the_server_still_answers_after_dropping_slow_clients(limited):
    assert limited.get("/healthz").status == 200


def test_the_gunicorn_master_is_one_thread_without_inference_libraries(limited):
    """Forking a process that holds onnxruntime's threads makes every worker abort at exit."""
    master = psutil.Process(limited.proc.pid)
    assert master.num_threads() == 1
    libraries = {Path(m.path).name for m in master.memory_maps()}
    assert not [name for name in libraries if "onnxruntime" in name or "espeak" in name]
    worker_libraries = {Path(m.path).name for m in master.children()[0].memory_maps()}
    assert [name for name in worker_libraries if name.startswith("onnxruntime_pybind11_state")]


def test_importing_the_worker_module_starts_no_thread():
    code = "import os, server.worker; print(len(os.listdir('/proc/self/task')))"
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, timeout=60, check=True)
    assert result.stdout == b"1\n"


def test_closing_cancels_again_a_background_task_that_swallowed_its_cancellation():
    # redis-py sometimes swallows a cancellation that lands mid-command; a loop around it then
    # carries on, and a SIGTERM's shutdown must not wait for it for ever.
    from server.services import cancel_and_wait

    cancels: list[str] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                cancels.append("cancel")
                if len(cancels) == 1:
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue  # swallowed, as redis-py can
                raise

    async def scenario() -> float:
        task = asyncio.ensure_future(stubborn())
        await asyncio.sleep(0)
        started = time.monotonic()
        await cancel_and_wait([task], wait_s=5)
        assert task.cancelled()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1
    assert cancels == ["cancel", "cancel"]


def test_closing_gives_up_on_a_task_that_never_ends_once_its_time_is_over():
    from server.services import cancel_and_wait

    deaf = True

    async def deaf_to_cancels() -> None:
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                if not deaf:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    async def scenario() -> float:
        nonlocal deaf
        task = asyncio.ensure_future(deaf_to_cancels())
        await asyncio.sleep(0)
        started = time.monotonic()
        await cancel_and_wait([task], wait_s=0.3)
        elapsed = time.monotonic() - started
        assert not task.done()  # left behind, as the process is ending anyway
        deaf = False  # so that this test's own loop can end
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return elapsed

    assert 0.25 < asyncio.run(scenario()) < 1
