"""Answers of L1 hits sent again: the same bytes as the handler's, only while L1 holds their audio.

A GET /tts or /audio answered from L1 is kept (server/handlers/answers.py) and sent again to an
identical request before any handler runs. These specs hold it to the handler's answer, header by
header, and to everything else a request gets: its own id and Date, its access line, its metrics.
"""

from __future__ import annotations

import pytest
from tornado import httputil

from server.cache.memory import MemoryCache
from server.handlers.answers import AnswerMemo, request_key
from tests.conftest import ServerProcess, query, unique_text
from tests.test_api import access_lines

ADMIN_KEY = "answers-admin-key-0123456789"
PER_REQUEST = ("date", "x-request-id")
PEER = "127.0.0.1"


def comparable(headers) -> list[tuple[str, str]]:
    """A response's headers without the two every answer gets anew, in a fixed order."""
    return sorted((name.lower(), value) for name, value in headers.items() if name.lower() not in PER_REQUEST)


def kept_answers(server: ServerProcess) -> int | None:
    return server.get("/admin/runtime", headers={"X-API-Key": ADMIN_KEY}).json()["answers"]


@pytest.fixture
def l1_server(make_server) -> ServerProcess:
    return make_server({"TTS_ADMIN_API_KEYS": ADMIN_KEY})


# -- the memo alone ----------------------------------------------------------------------------


def get(uri: str, **headers: str) -> httputil.HTTPServerRequest:
    request = httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine("GET", uri, "HTTP/1.1"),
        headers=httputil.HTTPHeaders({"Host": "tts.example", **headers}),
    )
    request.remote_ip = PEER
    return request


def remembered(memory: MemoryCache, *, body: bytes = b'{"cache":"l1"}') -> tuple[AnswerMemo, object]:
    memo = AnswerMemo(memory, max_bytes=1 << 20)
    request = get("/tts?text=Hi")
    headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Date": "then", "X-Request-Id": "a"})
    memo.remember(request, "/tts", headers, body, [("k", "wav")], {"cache": "l1"})
    return memo, request_key("GET", request.uri or "", request.headers, PEER)


def test_an_answer_is_found_while_l1_holds_the_very_entry_it_was_made_from():
    memory = MemoryCache(1 << 20)
    memory.put("k.wav", b"RIFF-one")
    memo, key = remembered(memory)

    answer, held = memo.find(key)  # type: ignore[misc]
    assert (answer.route, answer.body, held) == ("/tts", b'{"cache":"l1"}', [b"RIFF-one"])
    assert answer.headers == (("Content-Type", "application/json"),)  # Date and the id are per request


@pytest.mark.parametrize("change", ["replaced", "deleted", "cleared"])
def test_an_answer_goes_stale_when_its_entry_is_replaced_or_gone(change):
    memory = MemoryCache(1 << 20)
    memory.put("k.wav", b"RIFF-one")
    memo, key = remembered(memory)
    if change == "replaced":
        memory.put("k.wav", b"RIFF-one")  # equal bytes, but another entry: new word timings may differ
    elif change == "deleted":
        memory.delete("k.wav")
    else:
        memory.clear()

    assert memo.find(key) is None
    assert len(memo) == 0


def test_an_answer_made_from_a_shared_tier_is_not_kept():
    memo, key = remembered(MemoryCache(1 << 20))  # k.wav is not in L1
    assert memo.find(key) is None and len(memo) == 0


def test_an_audio_body_is_kept_only_when_it_is_the_l1_entry_itself():
    memory = MemoryCache(1 << 20)
    memory.put("k.wav", b"RIFF-one")
    memo = AnswerMemo(memory, max_bytes=1 << 20)
    headers = httputil.HTTPHeaders({"Content-Type": "audio/wav"})
    parsed = b"PCM parsed from the WAV"
    memo.remember(get("/audio/k.pcm"), "/audio", headers, parsed, [("k", "wav")], {}, body_is_entry=True)
    assert len(memo) == 0

    entry_bytes = memory.get("k.wav")
    assert entry_bytes is not None
    memo.remember(get("/audio/k.wav"), "/audio", headers, entry_bytes, [("k", "wav")], {}, body_is_entry=True)
    answer, held = memo.find(request_key("GET", "/audio/k.wav", get("/audio/k.wav").headers, PEER))  # type: ignore[misc]
    assert answer.body is None and held == [b"RIFF-one"]  # no copy: the body is L1's


def test_the_memo_is_bounded_by_the_bytes_its_answers_hold_and_drops_the_oldest():
    memory = MemoryCache(1 << 20)
    memory.put("k.wav", b"RIFF-one")
    memo = AnswerMemo(memory, max_bytes=4000)
    headers = httputil.HTTPHeaders({"Content-Type": "application/json"})
    for text in ("one", "two", "three"):
        memo.remember(get(f"/tts?text={text}"), "/tts", headers, b"x" * 500, [("k", "wav")], {})
    assert len(memo) == 2  # each holds about 1.5 KB: its target, headers, body and overhead

    def find(text: str):
        return memo.find(request_key("GET", f"/tts?text={text}", get("/").headers, PEER))

    assert find("one") is None and find("two") is not None and find("three") is not None
    memo.remember(get("/tts?text=" + "long" * 1000), "/tts", headers, b"{}", [("k", "wav")], {})
    assert len(memo) == 2  # larger than the whole memo: not kept, nothing dropped for it


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("HEAD", {}),
        ("POST", {}),
        ("GET", {"Range": "bytes=0-9"}),
        ("GET", {"If-None-Match": '"x"'}),
        ("GET", {"If-Range": '"x"'}),
        ("GET", {"Content-Length": "3"}),
        ("GET", {"Transfer-Encoding": "chunked"}),
    ],
)
def test_requests_that_depend_on_more_than_the_target_always_reach_their_handler(method, headers):
    assert request_key(method, "/audio/k.wav", httputil.HTTPHeaders({"Host": "h", **headers}), PEER) is None


def test_the_host_origin_and_forwarding_are_part_of_what_an_answer_depends_on():
    def key(peer: str = PEER, **headers: str):
        return request_key("GET", "/tts?text=Hi", httputil.HTTPHeaders(headers), peer)

    assert key(Host="a.example") == key(Host="a.example")
    assert key(Host="a.example") == key("10.0.0.9", Host="a.example")  # the peer alone: the same URL
    assert key(Host="a.example") != key(Host="b.example")
    assert key(Host="a.example") != key(Host="a.example", Origin="https://app.example")
    forwarded = {"Host": "a.example", "X-Forwarded-Proto": "https"}
    assert key(Host="a.example") != key(**forwarded)
    # Forwarding headers count only from a trusted proxy: from another peer they may not.
    assert key(**forwarded) != key("10.0.0.9", **forwarded)


# -- through a real server -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_an_identical_hit_gets_the_handlers_answer_again_with_its_own_id_and_date(l1_server, fmt):
    path = "/tts?" + query(text=unique_text("Again"), format=fmt)
    l1_server.get(path)  # synthesized
    by_handler = l1_server.get(path)  # an L1 hit: the handler answers, and its answer is kept
    assert by_handler.json()["cache"] == "l1"
    assert kept_answers(l1_server) == 1

    sent_again = l1_server.metric("tts_answers_sent_again_total")
    again = l1_server.get(path, headers={"X-Request-ID": "sent-again-1"})
    assert l1_server.metric("tts_answers_sent_again_total") == sent_again + 1
    assert again.status == 200
    assert again.body == by_handler.body
    assert comparable(again.headers) == comparable(by_handler.headers)
    assert again.headers["X-Request-ID"] == "sent-again-1"
    assert again.headers["Date"]
    fresh = l1_server.get(path).headers["X-Request-ID"]
    assert fresh not in ("sent-again-1", by_handler.headers["X-Request-ID"])

    audio_path = by_handler.json()["audio_path"]
    first = l1_server.get(audio_path)
    second = l1_server.get(audio_path)
    assert (first.status, second.status) == (200, 200)
    assert second.body == first.body and len(first.body) > 1000
    assert comparable(second.headers) == comparable(first.headers)
    assert second.headers["X-Cache"] == "l1"
    assert kept_answers(l1_server) == 2


def test_an_answer_sent_again_is_logged_and_counted_like_any_hit(l1_server):
    text = unique_text("Counted")
    path = "/tts?" + query(text=text)
    l1_server.get(path)
    l1_server.get(path)
    requests = l1_server.metric("tts_http_requests_total", 'route="/tts",status="200"')
    hits = l1_server.metric("tts_cache_hits_total", 'tier="l1"')
    sent_again = l1_server.metric("tts_answers_sent_again_total")

    l1_server.get(path, headers={"X-Request-ID": "sent-again-logged"})
    l1_server.get(path)

    assert l1_server.metric("tts_answers_sent_again_total") == sent_again + 2
    assert l1_server.metric("tts_http_requests_total", 'route="/tts",status="200"') == requests + 2
    assert l1_server.metric("tts_cache_hits_total", 'tier="l1"') == hits + 2
    (line,) = access_lines(l1_server, "sent-again-logged")
    assert line["message"] == "GET /tts 200" and line["logger"] == "server.access"
    assert (line["method"], line["path"], line["status"], line["cache"]) == ("GET", "/tts", 200, "l1")
    assert (line["voice"], line["text_chars"], line["client"]) == ("en_US-joe-medium", len(text), "127.0.0.1")
    assert "Counted number" not in l1_server.logs()


def test_deleted_audio_is_never_answered_from_a_kept_answer(l1_server):
    path = "/tts?" + query(text=unique_text("Deleted"))
    l1_server.get(path)
    kept = l1_server.get(path).json()
    audio_path = kept["audio_path"]
    assert l1_server.get(audio_path).status == 200
    assert l1_server.get(audio_path).status == 200  # kept by now

    admin = {"X-API-Key": ADMIN_KEY}
    assert l1_server.request_raw("DELETE", f"/admin/audio/{kept['hash']}", headers=admin).status == 200

    sent_again = l1_server.metric("tts_answers_sent_again_total")
    assert l1_server.get(audio_path).status == 404
    again = l1_server.get(path).json()
    assert again["cache"] == "miss"  # synthesized anew, not the kept "l1" answer
    assert l1_server.metric("tts_answers_sent_again_total") == sent_again


def test_ranges_and_conditional_requests_are_still_answered_by_the_handler(l1_server):
    path = "/tts?" + query(text=unique_text("Ranged"))
    l1_server.get(path)
    audio_path = l1_server.get(path).json()["audio_path"]
    whole = l1_server.get(audio_path)
    l1_server.get(audio_path)

    sent_again = l1_server.metric("tts_answers_sent_again_total")
    part = l1_server.get(audio_path, headers={"Range": "bytes=0-99"})
    assert (part.status, part.body) == (206, whole.body[:100])
    unchanged = l1_server.get(audio_path, headers={"If-None-Match": whole.headers["ETag"]})
    assert (unchanged.status, unchanged.body) == (304, b"")
    assert l1_server.metric("tts_answers_sent_again_total") == sent_again


def test_with_api_keys_only_a_request_with_a_valid_key_gets_a_kept_answer(make_server):
    server = make_server({"TTS_API_KEYS": "public-key-0123456789", "TTS_ADMIN_API_KEYS": ADMIN_KEY})
    path = "/tts?" + query(text=unique_text("Keyed"))
    key = {"Authorization": "Bearer public-key-0123456789"}
    server.get(path, headers=key)
    server.get(path, headers=key)
    assert kept_answers(server) == 1

    assert server.get(path, headers=key).status == 200
    assert server.metric("tts_answers_sent_again_total") == 1
    refused = server.get(path, headers={"Authorization": "Bearer wrong-key-0123456789"})
    assert refused.status == 401
    assert server.get(path).status == 401


def test_no_answer_is_kept_where_rate_limits_take_a_token_per_request(make_server, make_redis):
    redis = make_redis()
    server = make_server(
        {"TTS__LIMITS__ENABLED": "true", "TTS__REDIS__URL": redis.url, "TTS_ADMIN_API_KEYS": ADMIN_KEY}
    )
    path = "/tts?" + query(text=unique_text("Limited"))
    server.get(path)
    hit = server.get(path)
    assert hit.json()["cache"] == "l1"
    assert hit.headers["RateLimit-Remaining"]
    assert kept_answers(server) is None
