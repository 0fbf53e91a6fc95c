"""`./start.sh` as an operator runs it: set-up, gunicorn, a real request, and a clean SIGTERM."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import subprocess
import time
import wave

import av
import openai

from tests.conftest import ROOT, free_port, query, request

GRACE_S = 10


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_sh_serves_speech_and_stops_on_sigterm(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS")}
    env.update(
        {
            "TTS__SERVER__HOST": "127.0.0.1",
            "TTS__SERVER__PORT": str(port),
            "TTS__SERVER__GRACEFUL_TIMEOUT_S": str(GRACE_S),
            "TTS__STORAGE__DIR": str(tmp_path / "audio"),
            "TTS__SYNTHESIS__MODELS_DIR": str(tmp_path / "models"),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            # No Redis configured (config.yaml leaves redis.url empty): the master runs a private
            # redis-server; on a socket of this test's own, not the checkout's var/.
            "TTS__REDIS__PRIVATE_SOCKET": str(tmp_path / "var" / "redis.sock"),
        }
    )
    (tmp_path / "models").mkdir()
    log_path = tmp_path / "start.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["./start.sh", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's master and workers
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(base, "GET", "/readyz", timeout=2).status == 200:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("not ready in 120 s:\n" + log_path.read_text(errors="replace"))

        assert request(base, "GET", "/readyz").json()["redis"] == "ok"  # the private one
        assert (tmp_path / "var" / "redis.sock").is_socket()
        health = request(base, "GET", "/healthz")
        assert (health.status, health.json()) == (200, {"status": "ok"})
        spoken = request(base, "GET", "/tts?" + query(text="Started by the start script, it speaks."))
        assert spoken.status == 200
        url = spoken.json()["audio_url"]
        assert url.startswith(base + "/audio/")
        audio = request(base, "GET", url.removeprefix(base))
        assert audio.status == 200
        with wave.open(io.BytesIO(audio.body)) as wav:
            assert wav.getnframes() / wav.getframerate() > 0.3
        # An app written for OpenAI's API, with only its base URL changed.
        with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120) as sdk:
            mp3 = sdk.audio.speech.create(model="tts-1", voice="alloy", input="And it speaks OpenAI's API.")
        with av.open(io.BytesIO(mp3.content)) as container:
            assert container.streams.audio[0].codec_context.name == "mp3float"

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(GRACE_S) == 0
        assert not group_alive(proc.pid), "workers (or the private redis-server) outlived the master"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
