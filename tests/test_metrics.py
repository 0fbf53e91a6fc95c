"""`/metrics`: Prometheus text summed over gunicorn workers, with sensible values after traffic."""

from __future__ import annotations

import re

import pytest

from tests.conftest import query, unique_text


@pytest.fixture
def busy_server(make_server, make_redis):
    redis = make_redis()
    server = make_server({"TTS__REDIS__URL": redis.url, "TTS__SERVER__WORKERS": "2"}, command="gunicorn")
    texts = [f"{unique_text('Metric')} A second sentence follows." for _ in range(3)]
    paths = [
        server.get("/tts?" + query(text=text)).json()["audio_url"].removeprefix(server.base) for text in texts
    ]
    for text in texts * 3:
        assert server.get("/tts?" + query(text=text)).status == 200
    for path in paths:
        assert server.get(path).status == 200
    assert server.get("/tts/stream?" + query(text=unique_text("Streamed metric"))).status == 200
    assert server.get("/tts?speed=abc&text=x").status == 400
    return server, redis


def test_metric_names_follow_prometheus_conventions(busy_server):
    server, _ = busy_server
    text = server.get("/metrics").body.decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for name, kind in types.items():
        assert name.startswith("tts_"), name
        if kind == "counter":
            assert f"{name}_total" in text or name.endswith("_total"), name
        if "duration" in name or name.endswith("synthesis_seconds"):
            assert name.endswith("_seconds"), name


def test_requests_and_cache_tiers_are_counted_across_workers(busy_server):
    server, _ = busy_server
    assert server.metric("tts_http_requests_total", 'route="/tts",status="200"') == 12
    assert server.metric("tts_http_requests_total", 'route="/tts",status="400"') == 1
    assert server.metric("tts_http_requests_total", 'route="/audio",status="200"') == 3
    assert server.metric("tts_http_request_duration_seconds_count", 'route="/tts"') == 13
    # 3 misses by /tts, 1 by the stream; 9 /tts hits and 3 /audio hits, from whichever tier
    # the answering worker found them in (its own L1, or L2 when the other worker made them).
    assert server.metric("tts_cache_misses_total") == 4
    hits = sum(server.metric("tts_cache_hits_total", f'tier="{tier}"') for tier in ("l1", "l2", "disk"))
    assert hits == 12


def test_synthesis_time_and_real_time_factor_are_sensible(busy_server):
    server, _ = busy_server
    inferences = server.metric("tts_inferences_total")
    assert inferences >= 7  # 3 texts of two sentences, and a one-sentence stream
    assert server.metric("tts_synthesis_seconds_count") == inferences
    audio_s = server.metric("tts_synthesized_audio_seconds_total")
    compute_s = server.metric("tts_synthesis_seconds_sum")
    assert 0 < compute_s < audio_s  # faster than real time on any machine that runs the suite
    assert server.metric("tts_real_time_factor_count") == inferences
    assert 0 < server.metric("tts_real_time_factor_sum") / inferences < 1


def test_gauges_return_to_zero_when_idle(busy_server):
    server, _ = busy_server
    assert server.metric("tts_inference_queue_depth") == 0
    assert server.metric("tts_active_streams") == 0


def test_redis_errors_are_counted(busy_server):
    server, redis = busy_server
    # Not necessarily 0 before: on a loaded machine a call can outlast redis.timeout_s (0.25 s),
    # and that is an error too.
    before = server.metric("tts_redis_errors_total")
    redis.stop()
    for _ in range(4):
        assert server.get("/tts?" + query(text=unique_text("No redis"))).status == 200
    assert server.metric("tts_redis_errors_total") >= before + 1
