"""The cache tiers across real processes: L1 in a process, L2 in a real redis-server, files on disk.

Each "fresh process" here is a new server, so its L1 is empty and a hit can only come from the
tier the test means: Redis shared with another process, or a storage directory it left behind.
"""

from __future__ import annotations

import time
import zlib

from server.cache.memory import MemoryCache
from tests.conftest import ServerProcess, query, unique_text

# A request with Redis down must not wait on it for long (0.25 s timeouts, then the breaker); a
# few seconds leaves room for synthesis on a busy machine and still fails a hang of tens.
QUICK_S = 5.0
BREAKER_RESET_S = 1


def tts(server: ServerProcess, text: str) -> dict:
    resp = server.get("/tts?" + query(text=text))
    assert resp.status == 200, resp.body
    return resp.json()


def timed_tts(server: ServerProcess, text: str) -> tuple[dict, float]:
    started = time.monotonic()
    body = tts(server, text)
    return body, time.monotonic() - started


def redis_keys(redis) -> set[str]:
    return {key.decode() for key in redis.client().keys("tts:*")}


def test_l1_checksum_is_the_crc32_of_the_bytes_given_whatever_l1_holds():
    memory = MemoryCache(1 << 20)
    memory.put("k.wav", b"first")
    held = memory.get("k.wav")
    assert memory.checksum("k.wav", held) == memory.checksum("k.wav", held) == zlib.crc32(b"first")
    assert memory.checksum("k.wav", b"other") == zlib.crc32(b"other")
    memory.put("k.wav", b"replaced")
    assert memory.checksum("k.wav", memory.get("k.wav")) == zlib.crc32(b"replaced")
    assert MemoryCache(0).checksum("k.wav", b"off") == zlib.crc32(b"off")


def test_first_request_is_a_miss_then_l1(server):
    text = unique_text("Tiers")
    assert tts(server, text)["cache"] == "miss"
    assert tts(server, text)["cache"] == "l1"


def test_fresh_process_on_the_same_redis_hits_l2(make_redis, make_server, tmp_path):
    redis = make_redis()
    first = make_server({"TTS__REDIS__URL": redis.url, "TTS__STORAGE__DIR": str(tmp_path / "first")})
    said, fetched = unique_text("Shared through Redis"), unique_text("Fetched through Redis")
    entries = {name: tts(first, name) for name in (said, fetched)}
    wav = first.get(f"/audio/{entries[fetched]['hash']}.wav").body
    assert f"tts:audio:{entries[said]['hash']}.wav" in redis_keys(redis)

    second = make_server({"TTS__REDIS__URL": redis.url, "TTS__STORAGE__DIR": str(tmp_path / "second")})
    again = tts(second, said)
    assert again["cache"] == "l2"
    assert again["hash"] == entries[said]["hash"]
    audio = second.get(f"/audio/{entries[fetched]['hash']}.wav")
    assert audio.status == 200
    assert audio.headers["X-Cache"] == "l2"
    assert audio.body == wav


def test_fresh_process_on_the_same_storage_without_redis_hits_disk(make_server, tmp_path):
    storage = str(tmp_path / "audio")
    first = make_server({"TTS__STORAGE__DIR": storage})
    text = unique_text("Kept on disk")
    made = tts(first, text)
    wav = first.get(f"/audio/{made['hash']}.wav").body

    second = make_server({"TTS__STORAGE__DIR": storage})
    again = tts(second, text)
    assert again["cache"] == "disk"
    assert again["hash"] == made["hash"]
    assert second.get(f"/audio/{made['hash']}.wav").body == wav


def test_redis_stopping_mid_run_leaves_requests_fast_and_working(make_redis, make_server):
    redis = make_redis()
    server = make_server({"TTS__REDIS__URL": redis.url})
    before = unique_text("Before the outage")
    assert tts(server, before)["cache"] == "miss"

    redis.stop()
    hit, hit_s = timed_tts(server, before)
    assert hit["cache"] == "l1"
    assert hit_s < QUICK_S
    for n in range(3):  # enough failed Redis calls to open the breaker, and some after
        miss, miss_s = timed_tts(server, unique_text(f"During the outage {n}"))
        assert miss["cache"] == "miss"
        assert miss_s < QUICK_S
        audio = server.get(f"/audio/{miss['hash']}.wav")
        assert audio.status == 200
        assert audio.body[:4] == b"RIFF"


def test_server_uses_redis_again_after_it_restarts(make_redis, make_server):
    redis = make_redis()
    server = make_server({"TTS__REDIS__URL": redis.url, "TTS__REDIS__BREAKER_RESET_S": str(BREAKER_RESET_S)})
    redis.stop()
    for n in range(3):
        tts(server, unique_text(f"Outage {n}"))
    assert server.get("/readyz").json()["redis"] == "degraded"

    revived = make_redis(port=redis.port)
    # The breaker skips Redis for breaker_reset_s before it tries again; a stale pooled
    # connection failing on its first reuse would add another period each time.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        made = tts(server, unique_text("After the outage"))
        if f"tts:audio:{made['hash']}.wav" in redis_keys(revived):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("no new entry reached Redis after it came back")
    assert server.get("/readyz").json()["redis"] == "ok"
