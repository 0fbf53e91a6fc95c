"""The operator's sharp edges: oversize requests, hosts and proxies, config mistakes, readiness.

Each one was found by trying the server as a new user would; each answer is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.cache.redis import RedisCache
from server.ratelimit import SYNTHESIS, RateLimiter
from server.settings import LimitSettings, RedisSettings
from tests.conftest import ROOT, ServerProcess, query, unique_text

JSON = "application/json; charset=utf-8"


def raw_exchange(port: int, data: bytes, timeout: float = 30) -> bytes:
    """Send one raw request and read the whole answer (the server closes after an error)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_error(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]["code"]


# -- oversize requests ----------------------------------------------------------------------------


def test_a_100000_character_request_line_gets_a_json_414(server):
    answer = raw_exchange(
        server.port, b"GET /tts?text=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_and_error(answer) == (414, "uri_too_long")
    assert b"Content-Type: application/json; charset=utf-8" in answer


def test_a_header_block_over_the_limit_gets_a_json_431(server):
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"b" * 1000) for n in range(40))
    answer = raw_exchange(
        server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
    )
    assert status_and_error(answer) == (431, "headers_too_large")


# -- URLs behind proxies ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory):
    proc = ServerProcess(
        tmp_path_factory.mktemp("proxied"),
        {"TTS__SERVER__TRUSTED_PROXIES": "127.0.0.1/32", "TTS__SERVER__ALLOWED_HOSTS": "tts.example.com"},
    ).start()
    yield proc
    proc.stop()


def test_forwarded_proto_and_host_from_a_trusted_proxy_make_an_https_url(proxied):
    headers = {"Host": "10.1.2.3:8888", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "tts.example.com"}
    body = proxied.get("/tts?" + query(text=unique_text("Behind TLS")), headers=headers).json()
    assert body["audio_url"] == f"https://tts.example.com/audio/{body['hash']}.wav"
    assert body["audio_path"] == f"/audio/{body['hash']}.wav"


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(server):
    headers = {"Host": "localhost:1", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    body = server.get("/tts?" + query(text=unique_text("Untrusted")), headers=headers).json()
    assert body["audio_url"] == f"http://localhost:1/audio/{body['hash']}.wav"


def test_a_forwarded_host_outside_allowed_hosts_is_a_400(proxied):
    headers = {"Host": "tts.example.com", "X-Forwarded-Host": "evil.example"}
    resp = proxied.get("/tts?" + query(text=unique_text("Forged host")), headers=headers)
    assert (resp.status, resp.json()["error"]["code"]) == (400, "invalid_request")


# -- configuration mistakes stop the server, one line each ------------------------------------------


def start_failing(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TTS")}
    base.update(
        {
            "TTS_CONFIG": str(ROOT / "config.yaml"),
            "TTS__SERVER__PORT": "1",
            "TTS__STORAGE__DIR": str(tmp_path / "audio"),
            "TTS__SYNTHESIS__MODELS_DIR": str(tmp_path),
            **env,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "server"], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stderr.strip()


def test_an_unknown_default_voice_stops_the_server_naming_the_key(tmp_path):
    code, err = start_failing(tmp_path, {"TTS__SYNTHESIS__DEFAULT_VOICE": "xx_XX-nobody-low"})
    assert code == 2
    assert err.splitlines() == [
        "config error: synthesis.default_voice: unknown voice 'xx_XX-nobody-low'; found: en_US-joe-medium"
    ]


def test_a_missing_models_dir_stops_the_server_naming_it(tmp_path):
    missing = tmp_path / "no-such-dir"
    code, err = start_failing(tmp_path, {"TTS__SYNTHESIS__MODELS_DIR": str(missing)})
    assert (code, err) == (2, f"config error: synthesis.models_dir: directory not found: {missing}")


def test_an_invalid_default_voice_file_stops_the_server_naming_the_file(tmp_path):
    (tmp_path / "broken.onnx").write_text("not a model")
    (tmp_path / "broken.onnx.json").write_text("{}")
    code, err = start_failing(tmp_path, {"TTS__SYNTHESIS__DEFAULT_VOICE": "broken"})
    expected = f"config error: synthesis.default_voice: not an ONNX model: {tmp_path}/broken.onnx"
    assert (code, err) == (2, expected)


def test_a_broken_extra_voice_is_skipped_and_the_good_ones_served(make_server, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.onnx").write_bytes(b"\x08garbage")
    (models / "broken.onnx.json").write_text("{not json")
    proc = make_server({"TTS__SYNTHESIS__MODELS_DIR": str(models)})
    voices = [voice["id"] for voice in proc.get("/voices").json()["voices"]]
    assert voices == ["en_US-joe-medium"]
    assert "voice broken skipped: not a Piper voice config" in proc.logs()
    assert proc.get("/tts?" + query(text="Still speaking.")).status == 200


# -- readiness follows Redis without traffic ----------------------------------------------------------


def test_readyz_recovers_within_seconds_of_redis_returning_without_any_traffic(make_redis, make_server):
    redis = make_redis()
    proc = make_server(
        {
            "TTS__REDIS__URL": redis.url,
            "TTS__REDIS__PROBE_INTERVAL_S": "0.5",
            "TTS__REDIS__BREAKER_RESET_S": "0.5",
        }
    )
    assert proc.get("/readyz").json()["redis"] == "ok"
    redis.stop()
    deadline = time.monotonic() + 30
    while proc.get("/readyz").json()["redis"] != "degraded":
        assert time.monotonic() < deadline, "redis outage never reported"
        time.sleep(0.2)
    redis.start()  # same port
    deadline = time.monotonic() + 30
    while proc.get("/readyz").json()["redis"] != "ok":
        assert time.monotonic() < deadline, "readiness did not recover"
        time.sleep(0.2)


# -- rate-limit defaults ---------------------------------------------------------------------------


def sentences(count: int, chars: int) -> list[str]:
    return [f"Sentence {n}: " + "x" * (chars - 14) + "." for n in range(count)]


def test_default_limits_let_a_backend_send_a_30_sentence_document_one_sentence_a_request():
    limiter = RateLimiter(LimitSettings(), RedisCache(RedisSettings(url="")), clock=lambda: 1000.0)

    async def send() -> list[bool]:
        return [
            (await limiter.take("ip:backend", SYNTHESIS, limiter.synthesis_cost(len(text)))).allowed
            for text in sentences(30, 150)
        ]

    assert asyncio.run(send()) == [True] * 30


def test_default_limits_still_stop_a_client_sending_many_long_texts_at_once():
    limiter = RateLimiter(LimitSettings(), RedisCache(RedisSettings(url="")), clock=lambda: 1000.0)

    async def send() -> list[bool]:
        return [
            (await limiter.take("ip:flood", SYNTHESIS, limiter.synthesis_cost(len(text)))).allowed
            for text in sentences(15, 2000)
        ]

    assert asyncio.run(send()) == [True] * 6 + [False] * 9
