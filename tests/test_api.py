"""The HTTP API of a real server process: answers, audio files, probes, validation and errors."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import socket
import time
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Response, ServerProcess, multi_speaker_voice, query, request, unique_text

HASH = re.compile(r"[0-9a-f]{64}")
JSON = "application/json; charset=utf-8"
VOICE = "en_US-joe-medium"
PUBLIC_URL = "https://tts.example.com"
MAX_TEXT_CHARS = 50
MAX_BODY_BYTES = 1024  # the smallest the settings allow


def assert_error(resp: Response, status: int, code: str) -> str:
    """The one error shape: JSON {"error": {"code", "message"}} with a fitting status."""
    assert resp.status == status, resp.body
    assert resp.headers["Content-Type"] == JSON
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return body["error"]["message"]


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server without Redis, behind a public URL, with small text and body limits."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("configured"),
        {
            "TTS__SERVER__PUBLIC_URL": PUBLIC_URL,
            "TTS__SYNTHESIS__MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "TTS__SERVER__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        },
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stored(server: ServerProcess) -> tuple[str, bytes]:
    """One synthesized entry: its hash and its WAV."""
    meta = server.get("/tts?" + query(text=unique_text("Stored audio"))).json()
    wav = server.get(f"/audio/{meta['hash']}.wav").body
    return meta["hash"], wav


# -- /tts -----------------------------------------------------------------------------------------


def test_tts_get_answers_with_the_audio_description(server):
    text = unique_text("Describe the audio")
    resp = server.get("/tts?" + query(text=text, speed="slow", voice=VOICE))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == JSON
    body = resp.json()
    assert set(body) == {
        "hash",
        "text",
        "speed",
        "voice",
        "audio_url",
        "audio_path",
        "duration_s",
        "sample_rate",
        "cache",
    }
    assert HASH.fullmatch(body["hash"])
    assert body["text"] == text
    assert body["speed"] == "slow"
    assert body["voice"] == VOICE
    assert body["audio_url"] == f"{server.base}/audio/{body['hash']}.wav"
    assert body["audio_path"] == f"/audio/{body['hash']}.wav"
    assert body["sample_rate"] == 22050
    assert body["cache"] == "miss"
    with wave.open(io.BytesIO(server.get(f"/audio/{body['hash']}.wav").body)) as wav:
        assert body["duration_s"] == round(wav.getnframes() / wav.getframerate(), 3)


def test_tts_repeated_is_an_l1_hit_with_the_same_hash(server):
    path = "/tts?" + query(text=unique_text("Say it twice"))
    first, second = server.get(path).json(), server.get(path).json()
    assert (first["cache"], second["cache"]) == ("miss", "l1")
    assert second["hash"] == first["hash"]


def test_tts_post_json_is_the_same_request_as_get(server):
    text = unique_text("Posted as JSON")
    posted = server.post("/tts", {"text": text, "speed": "fast", "voice": VOICE})
    assert posted.status == 200
    assert posted.json()["cache"] == "miss"
    got = server.get("/tts?" + query(text=text, speed="fast", voice=VOICE)).json()
    assert got["cache"] == "l1"
    assert got["hash"] == posted.json()["hash"]


def test_audio_url_follows_the_request_host_when_it_is_a_loopback_name(server):
    resp = server.get("/tts?" + query(text=unique_text("Host")), headers={"Host": "localhost:8080"})
    body = resp.json()
    assert body["audio_url"] == f"http://localhost:8080/audio/{body['hash']}.wav"


def test_a_host_not_in_allowed_hosts_is_a_400_not_a_url(server):
    resp = server.get("/tts?" + query(text=unique_text("Forged")), headers={"Host": "evil.example:8080"})
    assert "allowed_hosts" in assert_error(resp, 400, "invalid_request")


def test_audio_url_uses_the_configured_public_url(configured):
    resp = configured.get("/tts?" + query(text="Public."), headers={"Host": "ignored.example:1"})
    body = resp.json()
    assert body["audio_url"] == f"{PUBLIC_URL}/audio/{body['hash']}.wav"


@pytest.mark.parametrize(
    ("speed", "echoed"),
    [
        ("very_slow", "very_slow"),
        ("slow", "slow"),
        ("normal", "normal"),
        ("fast", "fast"),
        ("very_fast", "very_fast"),
        ("0.25", 0.25),
        ("1.5", 1.5),
        ("4", 4.0),
    ],
)
def test_speed_accepts_presets_and_rates(server, speed, echoed):
    resp = server.get("/tts?" + query(text=unique_text("Speed"), speed=speed))
    assert resp.status == 200
    assert resp.json()["speed"] == echoed


def test_slower_speed_gives_longer_audio(server):
    text = unique_text("Slow and fast")
    slow = server.get("/tts?" + query(text=text, speed="very_slow")).json()
    fast = server.get("/tts?" + query(text=text, speed="very_fast")).json()
    assert slow["hash"] != fast["hash"]
    assert slow["duration_s"] > 2 * fast["duration_s"]


@pytest.mark.parametrize("speed", ["0.1", "4.5", "-1", "abc", "nan", "inf", "1e400", "0x10"])
def test_speed_outside_presets_and_range_is_400(server, speed):
    resp = server.get("/tts?" + query(text="Hello.", speed=speed))
    assert "speed" in assert_error(resp, 400, "invalid_request")


def test_json_speed_must_be_a_number_or_preset(server):
    resp = server.post("/tts", {"text": "Hello.", "speed": True})
    assert "speed" in assert_error(resp, 400, "invalid_request")


# -- input limits ----------------------------------------------------------------------------------


def test_missing_text_is_400(server):
    assert assert_error(server.get("/tts"), 400, "invalid_request") == "text is required"


def test_whitespace_only_text_is_400(server):
    resp = server.get("/tts?" + query(text=" \t\n \u00a0 "))
    assert assert_error(resp, 400, "invalid_request") == "text is empty"


def test_text_over_the_configured_limit_is_413(configured):
    resp = configured.get("/tts?" + query(text="a" * (MAX_TEXT_CHARS + 1)))
    assert str(MAX_TEXT_CHARS) in assert_error(resp, 413, "text_too_long")


def test_text_at_the_configured_limit_is_accepted(configured):
    text = ("Word " * MAX_TEXT_CHARS)[: MAX_TEXT_CHARS - 1] + "."
    assert configured.get("/tts?" + query(text=text)).status == 200


def test_control_characters_are_removed_from_text(server):
    clean = unique_text("Control characters")
    dirty = "\x00" + clean[:5] + "\x07\x1b" + clean[5:] + "\x7f\u200b"
    dirty_body = server.get("/tts?" + query(text=dirty)).json()
    assert dirty_body["text"] == clean
    clean_body = server.get("/tts?" + query(text=clean)).json()
    assert clean_body["hash"] == dirty_body["hash"]
    assert clean_body["cache"] == "l1"


def test_unknown_voice_is_400_and_lists_the_voices(server):
    resp = server.get("/tts?" + query(text="Hello.", voice="xx_XX-nobody-low"))
    message = assert_error(resp, 400, "unknown_voice")
    assert "xx_XX-nobody-low" in message
    assert VOICE in message


def test_malformed_json_is_400(server):
    resp = server.post("/tts", b'{"text": "Hello.",')
    assert assert_error(resp, 400, "invalid_request") == "the body is not valid JSON"


def test_json_array_body_is_400(server):
    resp = server.post("/tts", [{"text": "Hello."}])
    assert assert_error(resp, 400, "invalid_request") == "the body must be a JSON object"


def test_json_body_with_unknown_field_is_400(server):
    resp = server.post("/tts", {"text": "Hello.", "pitch": 2})
    assert assert_error(resp, 400, "invalid_request") == "unknown field: pitch"


def test_repeated_query_argument_is_400(server):
    resp = server.get("/tts?text=one&text=two")
    assert assert_error(resp, 400, "invalid_request") == "text is given more than once"


def test_invalid_utf8_in_query_is_400(server):
    resp = server.get("/tts?text=%FF%FEhello")
    assert assert_error(resp, 400, "invalid_request") == "text is not valid UTF-8"


def test_punctuation_only_text_is_400(server):
    resp = server.get("/tts?" + query(text="... --- ..."))
    assert assert_error(resp, 400, "invalid_request") == "text has nothing to speak"


def test_body_over_max_body_bytes_is_413(configured):
    body = b'{"text": "' + b"a" * (MAX_BODY_BYTES * 2) + b'"}'
    resp = configured.post("/tts", body)
    assert str(MAX_BODY_BYTES) in assert_error(resp, 413, "body_too_large")


def test_huge_declared_body_is_refused_before_it_is_read(configured):
    # Past a hard cap Tornado itself refuses at the headers: a bare 400 and a closed connection
    # (no handler runs, so no JSON), never a 500 and never megabytes read into memory.
    with socket.create_connection(("127.0.0.1", configured.port), timeout=30) as sock:
        sock.sendall(
            b"POST /tts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer == b"HTTP/1.1 400 Bad Request\r\n\r\n"
    assert configured.get("/healthz").status == 200


# -- routes and methods ---------------------------------------------------------------------------


def test_unknown_route_is_404_json(server):
    assert_error(server.get("/no/such/route"), 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [("DELETE", "/tts"), ("POST", "/healthz"), ("PUT", "/voices")])
def test_wrong_method_is_405_json(server, method, path):
    assert_error(request(server.base, method, path), 405, "method_not_allowed")


# -- /audio ----------------------------------------------------------------------------------------


def test_audio_is_a_wav_with_long_immutable_caching(server, stored):
    key, wav = stored
    resp = server.get(f"/audio/{key}.wav")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/wav"
    assert resp.headers["Content-Length"] == str(len(wav))
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Cache-Control"] == "public, max-age=604800, immutable"
    with wave.open(io.BytesIO(resp.body)) as parsed:
        assert parsed.getnframes() > 0


def test_audio_etag_revalidates_with_304(server, stored):
    key, _ = stored
    etag = server.get(f"/audio/{key}.wav").headers["ETag"]
    resp = server.get(f"/audio/{key}.wav", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.body == b""
    assert resp.headers["ETag"] == etag


def test_audio_etag_names_the_crc32_of_the_bytes_served_on_every_hit(server, stored):
    key, wav = stored
    for _ in range(3):  # the first may come from any tier; the next from L1, which remembers it
        resp = server.get(f"/audio/{key}.wav")
        assert resp.body == wav
        assert resp.headers["ETag"] == f'"{key[:32]}-wav-{zlib.crc32(wav):08x}"'


def test_audio_with_another_etag_is_sent_in_full(server, stored):
    key, wav = stored
    resp = server.get(f"/audio/{key}.wav", headers={"If-None-Match": '"something-else"'})
    assert resp.status == 200
    assert resp.body == wav


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-99", 0, 100), ("bytes=44-", 44, None), ("bytes=-100", -100, None), ("bytes=10-10", 10, 11)],
)
def test_audio_range_is_206_with_content_range(server, stored, header, start, end):
    key, wav = stored
    size = len(wav)
    part = wav[start:end]
    first = start % size
    resp = server.get(f"/audio/{key}.wav", headers={"Range": header})
    assert resp.status == 206
    assert resp.body == part
    assert resp.headers["Content-Range"] == f"bytes {first}-{first + len(part) - 1}/{size}"
    assert resp.headers["Content-Length"] == str(len(part))


def test_audio_range_past_the_end_is_416_with_the_size(server, stored):
    key, wav = stored
    resp = server.get(f"/audio/{key}.wav", headers={"Range": f"bytes={len(wav)}-"})
    assert_error(resp, 416, "range_not_satisfiable")
    assert resp.headers["Content-Range"] == f"bytes */{len(wav)}"


def test_audio_unknown_hash_is_404_json(server):
    assert_error(server.get(f"/audio/{'0' * 64}.wav"), 404, "not_found")


@pytest.mark.parametrize("name", ["abc", "Z" * 64, "0" * 63, "0" * 65, "ABCDEF" + "0" * 58])
def test_audio_malformed_hash_is_404_json(server, name):
    assert_error(server.get(f"/audio/{name}.wav"), 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "/audio/..%2F..%2Fetc%2Fpasswd.wav",
        "/audio/../../config.yaml",
        "/audio/../../config.yaml.wav",
        "/audio/%2e%2e%2f%2e%2e%2fconfig.yaml.wav",
        "/audio/%2E%2E/%2E%2E/config.yaml.wav",
        "/audio/%252e%252e%252fconfig.yaml.wav",
        "/audio/..%5c..%5cconfig.yaml.wav",
        "/audio/%2fetc%2fpasswd.wav",
        "/audio/{key2}/{key}.wav",
        "/audio/{key2}%2F{key}.wav",
        "/audio/{key}/..%2F..%2Fconfig.yaml.wav",
        "/audio/{key32}/{key32b}.wav",
    ],
)
def test_audio_path_traversal_never_leaves_the_store(server, stored, path):
    key, _ = stored
    path = path.format(key=key, key2=key[:2], key32=key[:32], key32b=key[32:])
    resp = server.get(path)
    assert_error(resp, 404, "not_found")


# -- probes and voices -----------------------------------------------------------------------------


def test_healthz_is_ok(server):
    resp = server.get("/healthz")
    assert resp.status == 200
    assert resp.json() == {"status": "ok"}


def test_readyz_reports_voices_providers_redis_ok_and_no_store(server):
    resp = server.get("/readyz")
    assert resp.status == 200
    body = resp.json()
    assert set(body) == {"status", "voices", "providers", "redis", "store", "jobs"}
    assert (body["status"], body["voices"], body["redis"]) == ("ready", [VOICE], "ok")
    assert body["jobs"]["state"] in ("starting", "ok")  # the job queue (tests/test_jobs.py)
    assert body["store"] == "disabled"
    # Which one depends on the onnxruntime build installed (the cpu or the gpu extra).
    assert body["providers"][VOICE] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert set(body["providers"]) == {VOICE}


def test_readyz_reports_redis_disabled_without_a_url(configured):
    resp = configured.get("/readyz")
    assert resp.status == 200
    assert resp.json()["redis"] == "disabled"


def test_readyz_reports_redis_degraded_once_redis_is_gone(make_redis, make_server):
    redis = make_redis()
    server = make_server({"TTS__REDIS__URL": redis.url})
    assert server.get("/readyz").json()["redis"] == "ok"
    redis.stop()
    # Readiness never waits on Redis; the state comes from the calls requests make.
    assert server.get("/tts?" + query(text=unique_text("Redis is gone"))).status == 200
    resp = server.get("/readyz")
    assert resp.status == 200
    assert resp.json()["redis"] == "degraded"


def test_readyz_is_503_loading_until_the_voices_are_loaded(make_server):
    server = make_server(wait_ready=False)
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not seen or seen[-1][0] != 200):
        with contextlib.suppress(OSError, http.client.HTTPException):
            resp = server.get("/readyz", timeout=5)
            seen.append((resp.status, resp.json()["status"]))
        time.sleep(0.01)
    # The socket is bound before the voice loads (about a second), so the first answers say so.
    assert seen[0] == (503, "loading")
    assert seen[-1] == (200, "ready")
    assert set(seen) == {(503, "loading"), (200, "ready")}


def test_a_worker_is_ready_only_once_it_has_run_the_text_front_end_and_every_encoder(make_server):
    # Otherwise its first compressed stream pays for loading FFmpeg and opening the codec (about
    # 100 ms more to first audio) and its first text for espeak's dictionary.
    server = make_server()  # fresh: nobody has asked it for anything yet
    assert server.get("/readyz").json()["status"] == "ready"
    assert server.proc is not None
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    for library in ("libavcodec", "libmp3lame", "libopus"):
        assert library in maps
    assert "warmed up in" in server.logs()


def first_answer(server: ServerProcess, path: str) -> Response:
    """The first answer from a server that is still starting (it may not listen yet)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            return server.get(path, timeout=60)
        time.sleep(0.01)
    raise AssertionError(f"no answer to {path} in 90 s")


def test_tts_arriving_while_voices_load_waits_for_them_instead_of_failing(make_server):
    # A restarted gunicorn worker shares the socket with ready ones, so it can be handed requests
    # during its second of loading: they wait for the voices rather than fail.
    server = make_server(wait_ready=False)
    resp = first_answer(server, "/tts?text=Early.")
    assert resp.status == 200
    assert resp.json()["cache"] == "miss"


def test_tts_is_503_not_ready_when_voices_cannot_load(make_server, tmp_path):
    # It passes the start-up checks (an ONNX-looking file, a valid config) but cannot load.
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake.onnx").write_bytes(b"\x08\x07 not really a model")
    (models / "fake.onnx.json").write_text('{"audio": {"sample_rate": 22050}, "phoneme_id_map": {}}')
    env = {"TTS__SYNTHESIS__DEFAULT_VOICE": "fake", "TTS__SYNTHESIS__MODELS_DIR": str(models)}
    server = make_server(env, wait_ready=False)
    resp = first_answer(server, "/tts?text=Never.")
    assert_error(resp, 503, "not_ready")
    assert resp.headers["Retry-After"] == "2"
    assert server.get("/readyz").json()["status"] == "unready"


def test_a_multi_speaker_voice_lists_its_speakers_by_name_and_speaks_as_each(make_server, tmp_path):
    voice = multi_speaker_voice(tmp_path / "models")
    proc = make_server({"TTS__SYNTHESIS__MODELS_DIR": str(tmp_path / "models")})
    listed = {entry["id"]: entry for entry in proc.get("/voices").json()["voices"]}[voice]
    assert (listed["num_speakers"], listed["speakers"]) == (2, ["alice", "bob"])
    text = unique_text("Two speakers.")
    alice = proc.get("/tts?" + query(text=text, voice=voice, speaker="alice")).json()
    bob = proc.get("/tts?" + query(text=text, voice=voice, speaker="bob")).json()
    assert (alice["cache"], bob["cache"]) == ("miss", "miss")  # a speaker is part of the key
    assert proc.get("/tts?" + query(text=text, voice=voice, speaker="carol")).status == 400


def test_voices_lists_language_sample_rate_and_speakers(server):
    resp = server.get("/voices")
    assert resp.status == 200
    assert resp.json() == {
        "default": VOICE,
        "voices": [
            {"id": VOICE, "language": "en_US", "sample_rate": 22050, "num_speakers": 1, "speakers": []}
        ],
    }


# -- request ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/tts?text=Hi.", "/no/such/route", "/tts"])
def test_a_valid_request_id_is_echoed(server, path):
    resp = server.get(path, headers={"X-Request-ID": "client-abc.123:4_5"})
    assert resp.headers["X-Request-ID"] == "client-abc.123:4_5"


@pytest.mark.parametrize("given", [None, "has spaces", "x" * 129, "semi;colon"])
def test_a_request_id_is_generated_when_missing_or_invalid(server, given):
    headers = {} if given is None else {"X-Request-ID": given}
    first = server.get("/healthz", headers=headers).headers["X-Request-ID"]
    second = server.get("/healthz", headers=headers).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def access_lines(server: ServerProcess, request_id: str) -> list[dict]:
    """The access lines logged for a request id (written when the server's IOLoop turn ends)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [
            json.loads(line)
            for line in server.logs().splitlines()
            if line.startswith("{") and f'"request_id": "{request_id}"' in line
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_every_request_logs_one_json_access_line_with_its_outcome_and_never_the_text(server):
    text = unique_text("Logged privately")
    server.get("/tts?" + query(text=text))
    server.get("/tts?" + query(text=text), headers={"X-Request-ID": "access-line-hit"})
    server.get("/tts?text=x&speed=abc", headers={"X-Request-ID": "access-line-400"})

    (hit,) = access_lines(server, "access-line-hit")
    assert hit["message"] == "GET /tts 200"
    assert hit["level"] == "INFO" and hit["logger"] == "server.access"
    assert (hit["method"], hit["path"], hit["status"], hit["cache"]) == ("GET", "/tts", 200, "l1")
    assert (hit["voice"], hit["text_chars"], hit["client"]) == ("en_US-joe-medium", len(text), "127.0.0.1")
    assert 0 < hit["duration_ms"] < 60_000
    assert hit["time"].endswith("+00:00")  # UTC, as every other line
    (refused,) = access_lines(server, "access-line-400")
    assert refused["status"] == 400
    assert "Logged privately" not in server.logs()


def test_error_answers_carry_a_request_id(server):
    resp = server.get("/tts?speed=abc&text=x")
    assert resp.status == 400
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])
