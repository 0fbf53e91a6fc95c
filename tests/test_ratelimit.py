"""Spec of the abuse limits: token buckets per client (address or API key), shared through Redis,
separate for syntheses and for any request; concurrent streams per client; a bounded inference
queue; and the client's address believed from X-Forwarded-For only behind trusted proxies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import threading
import time
from collections.abc import Iterator

import pytest

from server.cache.redis import RedisCache
from server.ratelimit import REQUESTS, SYNTHESIS, Decision, RateLimiter
from server.settings import LimitSettings, RedisSettings, Settings, load_settings
from tests.conftest import ROOT, Response, ServerProcess, query, unique_text
from tests.test_openapi import assert_conforms

UNKNOWN_AUDIO = f"/audio/{'0' * 64}.wav"  # a 404 that costs a request token and no synthesis
KEYS = [f"ratelimit-key-{name}-" + "k" * 16 for name in ("headers", "synthesis", "own", "streams")]
BURST = 5


def limited_env(burst: int = BURST, **extra: str) -> dict[str, str]:
    """Limits on, with a request bucket that refills so slowly a test never sees it refill."""
    return {
        "TTS__LIMITS__ENABLED": "true",
        "TTS__LIMITS__REQUESTS_BURST": str(burst),
        "TTS__LIMITS__REQUESTS_PER_MINUTE": "1",
        # One synthesis token per text, however long, so these tests count texts.
        "TTS__LIMITS__SYNTHESIS_UNIT_CHARS": "1000000",
        **extra,
    }


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def statuses(responses: list[Response]) -> list[int]:
    return [resp.status for resp in responses]


def remaining(responses: list[Response]) -> list[str | None]:
    return [resp.headers.get("RateLimit-Remaining") for resp in responses]


# -- defaults and configuration ------------------------------------------------------------------------


def test_default_settings_have_limits_enabled():
    limits = Settings().limits
    assert limits.enabled is True
    assert (limits.synthesis_per_minute, limits.synthesis_burst) == (60.0, 60)
    assert limits.synthesis_unit_chars == 200
    assert (limits.requests_per_minute, limits.requests_burst) == (1200.0, 200)
    assert limits.streams_per_client == 4


def test_shipped_config_keeps_the_default_limits():
    assert load_settings(ROOT / "config.yaml", environ={}).limits == LimitSettings()


def test_config_can_change_or_turn_off_the_limits():
    environ = {"TTS__LIMITS__ENABLED": "false", "TTS__LIMITS__REQUESTS_BURST": "7"}
    limits = load_settings(ROOT / "config.yaml", environ=environ).limits
    assert (limits.enabled, limits.requests_burst) == (False, 7)


def test_limits_turned_off_never_refuse_and_send_no_ratelimit_headers(server):
    # The shared test server runs with TTS__LIMITS__ENABLED=false.
    answers = [server.get(UNKNOWN_AUDIO) for _ in range(5)]
    assert statuses(answers) == [404] * 5
    assert remaining(answers) == [None] * 5


# -- the limiter itself -------------------------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand (the limiter takes its clock as a parameter)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def local_limiter(clock: FakeClock, **limits: float) -> RateLimiter:
    settings = LimitSettings(**limits)  # type: ignore[arg-type]
    return RateLimiter(settings, RedisCache(RedisSettings(url="")), clock=clock)


def test_decision_headers_name_the_bucket_and_the_wait():
    refused = Decision(allowed=False, limit=5, remaining=0, reset_s=300, retry_after_s=60)
    assert refused.headers() == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "300",
        "Retry-After": "60",
    }
    allowed = Decision(allowed=True, limit=5, remaining=4, reset_s=60, retry_after_s=0)
    assert "Retry-After" not in allowed.headers()


def test_local_bucket_refuses_past_the_burst_and_refills_at_the_rate():
    clock = FakeClock()
    limiter = local_limiter(clock, requests_per_minute=60, requests_burst=2)
    first, second, third = (asyncio.run(limiter.take("ip:a", REQUESTS)) for _ in range(3))
    assert (first.allowed, first.remaining, second.allowed, second.remaining) == (True, 1, True, 0)
    assert (third.allowed, third.retry_after_s, third.reset_s) == (False, 1, 2)
    clock.now += 1.0  # one token per second
    assert asyncio.run(limiter.take("ip:a", REQUESTS)).allowed is True
    assert asyncio.run(limiter.take("ip:a", REQUESTS)).allowed is False


def test_buckets_are_per_client_and_per_kind():
    clock = FakeClock()
    limiter = local_limiter(clock, requests_burst=1, synthesis_burst=1)
    assert asyncio.run(limiter.take("ip:a", REQUESTS)).allowed is True
    assert asyncio.run(limiter.take("ip:a", REQUESTS)).allowed is False
    assert asyncio.run(limiter.take("ip:b", REQUESTS)).allowed is True
    assert asyncio.run(limiter.take("ip:a", SYNTHESIS)).allowed is True


def test_redis_bucket_is_one_bucket_for_every_limiter_on_the_same_redis(redis_server):
    async def take_from_two_limiters() -> list[bool]:
        redis = RedisSettings(url=redis_server.url, key_prefix=f"rl-test-{time.monotonic_ns()}:")
        limits = LimitSettings(requests_per_minute=1, requests_burst=3)
        one, two = RedisCache(redis), RedisCache(redis)
        first, second = RateLimiter(limits, one), RateLimiter(limits, two)
        try:
            takes = [first, second, first, second]
            return [(await limiter.take("ip:shared", REQUESTS)).allowed for limiter in takes]
        finally:
            await one.close()
            await two.close()

    assert asyncio.run(take_from_two_limiters()) == [True, True, True, False]


# -- a server with limits on --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Limits on: 5 requests per client, 2 new syntheses, 1 stream; one API key per test."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("limited"),
        limited_env(
            TTS_ADMIN_API_KEYS=",".join(KEYS),
            TTS__LIMITS__SYNTHESIS_BURST="2",
            TTS__LIMITS__SYNTHESIS_PER_MINUTE="0.1",
            TTS__LIMITS__STREAMS_PER_CLIENT="1",
        ),
    ).start()
    yield proc
    proc.stop()


def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(limited):
    answers = [limited.get(UNKNOWN_AUDIO, headers=as_key(KEYS[0])) for _ in range(BURST + 1)]
    assert statuses(answers) == [404] * BURST + [429]
    assert remaining(answers) == ["4", "3", "2", "1", "0", "0"]
    refused = answers[-1]
    assert refused.json() == {"error": {"code": "rate_limited", "message": "too many requests; slow down"}}
    assert refused.headers["RateLimit-Limit"] == "5"
    # One token a minute: the next one is due within 60 s, the bucket is full in 5 minutes.
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert 240 <= int(refused.headers["RateLimit-Reset"]) <= 300


def test_synthesis_bucket_is_separate_and_cache_hits_go_on_when_it_is_empty(limited):
    client = as_key(KEYS[1])
    first, second, third = (unique_text("Synthesis bucket") for _ in range(3))
    made = [limited.get("/tts?" + query(text=text), headers=client) for text in (first, second, third)]
    assert statuses(made) == [200, 200, 429]
    assert made[2].json() == {
        "error": {"code": "rate_limited", "message": "too many new syntheses; slow down"}
    }
    assert made[2].headers["RateLimit-Limit"] == "2"  # the synthesis bucket's burst, not the requests'
    hit = limited.get("/tts?" + query(text=first), headers=client)
    assert (hit.status, hit.json()["cache"]) == (200, "l1")
    assert limited.get(f"/audio/{hit.json()['hash']}.wav", headers=client).status == 200


def test_an_api_key_gets_its_own_bucket_apart_from_the_address(limited):
    by_address = [limited.get(UNKNOWN_AUDIO) for _ in range(BURST + 1)]
    assert statuses(by_address) == [404] * BURST + [429]
    with_key = limited.get(UNKNOWN_AUDIO, headers=as_key(KEYS[2]))
    assert (with_key.status, with_key.headers["RateLimit-Remaining"]) == (404, "4")
    # A key the server does not know is no identity: the address's empty bucket applies.
    assert limited.get(UNKNOWN_AUDIO, headers=as_key("not-a-configured-key-at-all")).status == 429


def test_a_second_concurrent_stream_of_one_client_is_429_while_the_first_is_open(limited):
    client = as_key(KEYS[3])
    host, port = limited.base.removeprefix("http://").split(":")
    first = http.client.HTTPConnection(host, int(port), timeout=60)
    long_text = unique_text("Streaming slowly " + "and on and on, " * 100)
    first.request("GET", "/tts/stream?" + query(text=long_text), headers=client)
    opened = first.getresponse()  # headers and the first audio are there; the stream goes on
    try:
        assert opened.status == 200
        second = limited.get("/tts/stream?" + query(text=unique_text("Second stream")), headers=client)
        assert second.status == 429
        assert second.headers["Retry-After"] == "1"
        assert second.json()["error"]["message"] == "too many concurrent streams for this client"
    finally:
        first.close()
    # Closing the first frees its slot as soon as the server sees the connection go.
    deadline = time.monotonic() + 30
    third = limited.get("/tts/stream?" + query(text=unique_text("Third stream")), headers=client)
    while third.status == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
        third = limited.get("/tts/stream?" + query(text=unique_text("Third stream")), headers=client)
    assert third.status == 200
    assert len(third.body) > 0


# -- shared through Redis, and the fallback without it ------------------------------------------------


def test_replicas_on_one_redis_share_each_clients_bucket(make_redis, make_server):
    redis = make_redis()
    env = limited_env(TTS__REDIS__URL=redis.url)
    replica_a, replica_b = make_server(env), make_server(env)
    on_a = [replica_a.get(UNKNOWN_AUDIO) for _ in range(3)]
    on_b = [replica_b.get(UNKNOWN_AUDIO) for _ in range(3)]
    assert statuses(on_a + on_b) == [404, 404, 404, 404, 404, 429]
    assert remaining(on_a + on_b) == ["4", "3", "2", "1", "0", "0"]
    assert replica_a.get(UNKNOWN_AUDIO).status == 429


def test_with_redis_stopped_each_worker_still_limits_on_its_own(make_redis, make_server):
    redis = make_redis()
    server = make_server(limited_env(TTS__REDIS__URL=redis.url))
    assert server.get(UNKNOWN_AUDIO).headers["RateLimit-Remaining"] == "4"  # counted in Redis
    redis.stop()
    # The in-process bucket starts full: looser while Redis is out, never absent.
    answers = [server.get(UNKNOWN_AUDIO) for _ in range(BURST + 1)]
    assert statuses(answers) == [404] * BURST + [429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert server.get("/readyz").json()["redis"] == "degraded"


# -- the inference queue --------------------------------------------------------------------------------


def test_a_full_inference_queue_is_503_with_retry_after(make_server):
    server = make_server({"TTS__SYNTHESIS__MAX_ACTIVE_REQUESTS": "1"})
    doc = server.get("/openapi.json").json()
    # Two different texts (one text would share a single synthesis), long enough to overlap.
    texts = [unique_text("Queue " + "and so on, " * 30) for _ in range(2)]
    start = threading.Barrier(2)

    def post(text: str) -> Response:
        start.wait()
        return server.post("/tts", {"text": text})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(post, texts))
    assert sorted(statuses(answers)) == [200, 503]
    refused = next(resp for resp in answers if resp.status == 503)
    assert refused.json() == {"error": {"code": "overloaded", "message": "the server is busy; retry shortly"}}
    assert refused.headers["Retry-After"] == "1"
    for resp in answers:
        assert_conforms(doc, "POST", "/tts", resp)


# -- who the client is behind a proxy ------------------------------------------------------------------


def test_forged_x_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit(make_server):
    server = make_server(limited_env(burst=2))
    forged = [server.get(UNKNOWN_AUDIO, headers={"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(3)]
    assert statuses(forged) == [404, 404, 429]


def test_x_forwarded_for_from_a_trusted_proxy_gives_each_client_its_bucket(make_server):
    server = make_server(limited_env(burst=2, TTS__SERVER__TRUSTED_PROXIES="127.0.0.1/32"))
    alice = {"X-Forwarded-For": "203.0.113.1"}
    bob = {"X-Forwarded-For": "203.0.113.2"}
    answers = [server.get(UNKNOWN_AUDIO, headers=headers) for headers in (alice, alice, alice, bob)]
    assert statuses(answers) == [404, 404, 429, 404]
    assert remaining(answers) == ["1", "0", "0", "1"]
    # Only the hops our proxy added count: a client cannot pick an address left of its own.
    spoofed = {"X-Forwarded-For": "203.0.113.2, 203.0.113.1"}
    assert server.get(UNKNOWN_AUDIO, headers=spoofed).status == 429
