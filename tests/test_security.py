"""Hostile input, security headers, CORS, client addresses and the HTTP server's own limits.

Every hostile request gets an exact, JSON answer (never a 500, never a file it should not see),
and the server stays healthy after it.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import cast

import pytest
import tornado
from hypothesis import given
from hypothesis import strategies as st

from server.app import make_app
from server.clients import client_address, parse_networks
from server.errors import InvalidRequest
from server.handlers.player import player_page
from server.request import SPEED_PRESETS, parse_speed
from server.services import Services
from server.settings import Settings, SettingsError, load_settings, settings_from_mapping
from server.worker import make_http_server
from tests.conftest import ROOT, Response, ServerProcess, query, request, unique_text

JSON = "application/json; charset=utf-8"
APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
PREFLIGHT_METHODS = "GET, POST, HEAD, OPTIONS"
PREFLIGHT_HEADERS = "Content-Type, X-Request-ID, X-API-Key, Authorization, Range"
CROWD_KEY = "security-crowd-key-" + "k" * 16


def assert_error(resp: Response, status: int, code: str, message: str | None = None) -> None:
    assert resp.status == status, resp.body
    assert resp.headers["Content-Type"] == JSON
    error = resp.json()["error"]
    assert error["code"] == code
    if message is not None:
        assert error["message"] == message


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A CORS allowlist (with "null" on it, which must still never be allowed), 256 KiB bodies."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("cors"),
        {"TTS__SERVER__CORS_ORIGINS": f"{APP_ORIGIN},null", "TTS__SERVER__MAX_BODY_BYTES": "262144"},
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def any_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("cors-any"), {"TTS__SERVER__CORS_ORIGINS": "*"}).start()
    yield proc
    proc.stop()


# -- the HTTP server ----------------------------------------------------------------------------------


def test_tornado_has_the_fixes_of_6_5_7():
    assert tornado.version_info >= (6, 5, 7)


def test_http_server_replaces_tornados_loose_defaults():
    settings = Settings()
    server = make_http_server(make_app(settings, cast(Services, None)), settings)
    params = server.conn_params
    # Tornado: 64 KiB, and past it a dropped connection. Ours reads up to a hard 1 MiB so that
    # server.max_header_bytes (16 KiB) is answered with a JSON 414 or 431 (BaseHandler).
    assert params.max_header_size == 1 << 20
    assert params.header_timeout == 60.0  # Tornado: an hour
    assert params.body_timeout == 10.0  # Tornado: none
    # Tornado: 100 MiB. Ours reads a /jobs document (4 bytes a character of jobs.max_text_chars,
    # plus the other fields); every other route answers bodies past max_body_bytes (64 KiB) with
    # a JSON 413 (the 70,000-character /tts body below).
    assert params.max_body_size == 4 * settings.jobs.max_text_chars + 65536


# -- security headers ---------------------------------------------------------------------------------


SEVERAL_ANSWERS = [
    ("GET", "/", None, 200),
    ("GET", "/tts?" + query(text="Security headers."), None, 200),
    ("GET", "/tts", None, 400),
    ("POST", "/tts", b"{", 400),
    ("GET", f"/audio/{'0' * 64}.wav", None, 404),
    ("GET", "/no/such/page", None, 404),
    ("DELETE", "/tts", None, 405),
    ("POST", "/tts", json.dumps({"text": "a" * 70_000}).encode(), 413),
    ("GET", "/voices", None, 200),
    ("GET", "/healthz", None, 200),
    ("GET", "/readyz", None, 200),
    ("GET", "/metrics", None, 200),
    ("GET", "/openapi.json", None, 200),
    ("GET", "/admin/config", None, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), SEVERAL_ANSWERS)
def test_every_answer_carries_the_security_headers(server, method, path, body, status):
    resp = request(server.base, method, path, body=body, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])
    if path != "/":
        assert resp.headers["Content-Security-Policy"] is None


def test_player_page_runs_under_a_strict_content_security_policy(server):
    csp = server.get("/").headers["Content-Security-Policy"]
    assert csp == player_page().csp
    directives = dict(part.split(" ", 1) for part in csp.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert re.fullmatch(r"('sha256-[A-Za-z0-9+/]+=*' ?)+", directives["script-src"])
    assert "unsafe" not in csp


# -- CORS ----------------------------------------------------------------------------------------------


def cors(resp: Response) -> dict[str, str | None]:
    names = ("Allow-Origin", "Allow-Credentials", "Allow-Methods", "Allow-Headers", "Max-Age")
    return {name: resp.headers.get(f"Access-Control-{name}") for name in names}


def preflight(server: ServerProcess, path: str, origin: str) -> Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    return server.request_raw(
        "OPTIONS", path, headers={**headers, "Access-Control-Request-Headers": "content-type"}
    )


NO_CORS = {
    "Allow-Origin": None,
    "Allow-Credentials": None,
    "Allow-Methods": None,
    "Allow-Headers": None,
    "Max-Age": None,
}


def test_default_config_allows_only_the_same_origin():
    assert Settings().server.cors_origins == ()
    assert load_settings(ROOT / "config.yaml", environ={}).server.cors_origins == ()


def test_default_server_gives_a_foreign_origin_no_cors_headers(server):
    resp = server.get("/voices", headers={"Origin": OTHER_ORIGIN})
    assert resp.status == 200
    assert cors(resp) == NO_CORS
    assert resp.headers["Vary"] is None


def test_allowed_origin_is_echoed_with_vary_and_never_with_credentials(configured):
    resp = configured.get("/voices", headers={"Origin": APP_ORIGIN})
    assert resp.status == 200
    assert cors(resp) | {"Allow-Methods": None} == {**NO_CORS, "Allow-Origin": APP_ORIGIN}
    assert resp.headers["Vary"] == "Origin"
    exposed = resp.headers["Access-Control-Expose-Headers"].split(", ")
    assert {"Retry-After", "RateLimit-Remaining", "X-Audio-Sample-Rate", "Content-Range"} <= set(exposed)


def test_error_answers_carry_cors_so_the_page_can_read_them(configured):
    resp = configured.get("/tts", headers={"Origin": APP_ORIGIN})
    assert_error(resp, 400, "invalid_request", "text is required")
    assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


@pytest.mark.parametrize(
    "origin", [OTHER_ORIGIN, "null", "https://app.example.com.evil.net", APP_ORIGIN + ":8443"]
)
def test_origin_not_on_the_allowlist_or_null_gets_no_cors_headers(configured, origin):
    resp = configured.get("/voices", headers={"Origin": origin})
    assert cors(resp) == NO_CORS
    assert resp.headers["Vary"] == "Origin"  # so no cache hands the allowed origin's answer to it


@pytest.mark.parametrize("path", ["/tts", "/tts/stream"])
def test_preflight_from_an_allowed_origin_gets_methods_and_headers(configured, path):
    resp = preflight(configured, path, APP_ORIGIN)
    assert (resp.status, resp.body) == (204, b"")
    assert cors(resp) == {
        "Allow-Origin": APP_ORIGIN,
        "Allow-Credentials": None,
        "Allow-Methods": PREFLIGHT_METHODS,
        "Allow-Headers": PREFLIGHT_HEADERS,
        "Max-Age": "600",
    }


@pytest.mark.parametrize("path", ["/tts", "/tts/stream"])
@pytest.mark.parametrize("which", ["server", "configured"])  # default config, and an allowlist
def test_preflight_from_an_origin_not_allowed_gets_no_permission(request, which, path):
    resp = preflight(request.getfixturevalue(which), path, OTHER_ORIGIN)
    assert (resp.status, resp.body) == (204, b"")
    assert cors(resp) == NO_CORS


def test_any_origin_when_configured_is_a_star_without_credentials(any_origin):
    resp = any_origin.get("/voices", headers={"Origin": OTHER_ORIGIN})
    assert cors(resp) == {**NO_CORS, "Allow-Origin": "*"}
    assert resp.headers["Vary"] is None  # "*" is the same answer for everyone
    assert cors(any_origin.get("/voices", headers={"Origin": "null"})) == NO_CORS


@pytest.mark.parametrize("path", ["/tts", "/tts/stream"])
def test_any_origin_preflight_is_allowed(any_origin, path):
    resp = preflight(any_origin, path, OTHER_ORIGIN)
    assert resp.status == 204
    assert cors(resp) == {
        "Allow-Origin": "*",
        "Allow-Credentials": None,
        "Allow-Methods": PREFLIGHT_METHODS,
        "Allow-Headers": PREFLIGHT_HEADERS,
        "Max-Age": "600",
    }


# -- client addresses ------------------------------------------------------------------------------------


PROXIES = parse_networks(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("10.1.2.3", "203.0.113.7", ()) == "10.1.2.3"


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored():
    assert client_address("198.51.100.4", "203.0.113.7", PROXIES) == "198.51.100.4"


def test_the_client_is_the_first_untrusted_hop_from_the_right():
    # The client forged the first entry; 203.0.113.7 is who our proxies really saw.
    assert client_address("10.0.0.2", "1.2.3.4, 203.0.113.7, 10.0.0.9", PROXIES) == "203.0.113.7"


def test_when_every_hop_is_trusted_the_leftmost_is_the_client():
    assert client_address("127.0.0.1", "10.0.0.5, 10.0.0.9", PROXIES) == "10.0.0.5"


def test_ipv6_addresses_are_understood_and_normalized():
    assert client_address("fd00::1", "2001:DB8::0:1", PROXIES) == "2001:db8::1"


@pytest.mark.parametrize("forwarded", ["", " , ", "not-an-address", "203.0.113.7, garbage"])
def test_garbage_in_x_forwarded_for_falls_back_to_the_proxy(forwarded):
    assert client_address("10.0.0.2", forwarded, PROXIES) == "10.0.0.2"


def test_trusted_proxies_may_be_written_with_host_bits():
    assert parse_networks(["10.1.2.3/8"]) == (ipaddress.ip_network("10.0.0.0/8"),)


def test_a_trusted_proxy_that_is_not_an_address_is_a_config_error():
    with pytest.raises(SettingsError) as caught:
        settings_from_mapping({"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}})
    assert caught.value.key == "server.trusted_proxies"


@given(st.text(max_size=200), st.ip_addresses().map(str))
def test_any_x_forwarded_for_from_an_untrusted_peer_leaves_the_peer(forwarded, peer):
    trusted = parse_networks(["10.0.0.0/8"])
    if ipaddress.ip_address(peer) in trusted[0]:
        return
    assert client_address(peer, forwarded, trusted) == peer


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=5))
def test_behind_a_trusted_proxy_the_client_is_always_an_address_from_the_header(hops):
    found = client_address("10.0.0.1", ", ".join(hops), parse_networks(["10.0.0.0/8"]))
    assert found in hops


# -- speed parsing (property) ---------------------------------------------------------------------------


@given(st.floats(min_value=0.25, max_value=4.0))
def test_any_rate_from_a_quarter_to_four_is_accepted_as_its_inverse(rate):
    assert parse_speed(rate) == (rate, 1.0 / rate)
    assert parse_speed(repr(rate)) == (rate, 1.0 / rate)  # the same rate as query text


@given(st.floats().filter(lambda x: not 0.25 <= x <= 4.0))
def test_any_rate_outside_the_range_or_not_finite_is_rejected(rate):
    with pytest.raises(InvalidRequest):
        parse_speed(rate)
    with pytest.raises(InvalidRequest):
        parse_speed(repr(rate))


def not_a_speed(text: str) -> bool:
    if text == "" or text.strip().lower() in SPEED_PRESETS:
        return False
    try:
        return not 0.25 <= float(text) <= 4.0 or not math.isfinite(float(text))
    except ValueError:
        return True


@given(st.text(max_size=30).filter(not_a_speed))
def test_any_text_that_is_neither_a_preset_nor_a_rate_is_rejected(text):
    with pytest.raises(InvalidRequest) as caught:
        parse_speed(text)
    assert caught.value.status == 400


# -- hostile input ---------------------------------------------------------------------------------------


TRAVERSALS = [
    "/audio/..%2F..%2Fconfig.yaml.wav",
    "/audio/%2e%2e%2f%2e%2e%2fconfig.yaml.wav",
    "/audio/%2E%2E/%2E%2E/config.yaml.wav",
    "/audio/%252e%252e%252fconfig.yaml.wav",
    "/audio/..%5c..%5cconfig.yaml.wav",
    "/audio/..%00.wav",
    "/audio/%2fetc%2fpasswd.wav",
    "/audio/....%2f%2f....%2f%2fconfig.yaml.wav",
    "/audio/.wav",
]


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_path_traversal_on_audio_is_a_json_404_and_never_a_file(server, path, method):
    resp = server.request_raw(method, path)
    assert resp.status == 404
    assert resp.headers["Content-Type"] == JSON
    if method == "GET":
        # A raw "/" leaves the audio route (so: no such route); an encoded one is only a bad hash.
        message = "no such route" if "/" in path.removeprefix("/audio/") else "no such audio"
        assert resp.json() == {"error": {"code": "not_found", "message": message}}
    for secret in (b"root:", b"server:", b"max_body_bytes", b"RIFF"):
        assert secret not in resp.body


def test_body_over_max_body_bytes_is_a_json_413(server):
    resp = server.post("/tts", {"text": "a" * 70_000})
    assert_error(resp, 413, "body_too_large", "the request body is larger than 65536 bytes")
    assert server.get("/healthz").status == 200


def test_body_far_over_the_limit_is_cut_off_without_reading_it(server):
    # Past the hard cap Tornado drops the connection before reading the body (and answers nothing).
    with pytest.raises(ConnectionError):
        server.post("/tts", b'{"text": "' + b"a" * (16 << 20) + b'"}')
    assert server.get("/healthz").status == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"", "the body is not valid JSON"),
        (b'{"text": "unterminated', "the body is not valid JSON"),
        (b"[" * 30_000 + b"]" * 30_000, "the body is not valid JSON"),  # nesting past the recursion limit
        (b'"just a string"', "the body must be a JSON object"),
        (b"null", "the body must be a JSON object"),
        (
            b'{"text": "Hi.", "speed": NaN}',
            "speed must be a number from 0.25 to 4.0 or one of very_slow, slow, normal, fast, very_fast",
        ),
        (b'{"text": ["Hi."]}', "text must be a string"),
        (b'{"text": "Hi.", "text2": 1}', "unknown field: text2"),
        (b'{"text": "\xff\xfe bad bytes"}', "the body is not valid JSON"),
    ],
)
def test_malformed_json_is_a_json_400(server, body, message):
    assert_error(server.post("/tts", body), 400, "invalid_request", message)


def test_invalid_utf8_in_the_query_is_a_json_400(server):
    assert_error(server.get("/tts?text=Hello%FF%FE"), 400, "invalid_request", "text is not valid UTF-8")
    assert_error(
        server.get("/tts/stream?text=Hi&format=%C0"), 400, "invalid_request", "format is not valid UTF-8"
    )


@pytest.mark.parametrize("path", ["/audio/%c0%ae%c0%ae%c0%afconfig.yaml.wav", "/audio/%FF%FE.wav"])
def test_invalid_utf8_in_the_path_is_a_json_400(server, path):
    resp = server.get(path)
    assert_error(resp, 400, "bad_request")
    assert b"RIFF" not in resp.body and b"server:" not in resp.body


def test_lone_surrogates_in_json_text_are_dropped(server):
    resp = server.post("/tts", b'{"text": "Lone \\ud800 surrogate \\udfff here."}')
    assert resp.status == 200
    assert resp.json()["text"] == "Lone surrogate here."


def test_nul_and_control_characters_are_removed_from_text(server):
    marker = unique_text("Controls")
    raw = f"Null\x00 and bell\x07 and escape\x1b here, {marker}"
    for resp in (server.get("/tts?" + query(text=raw)), server.post("/tts", {"text": raw})):
        assert resp.status == 200
        assert resp.json()["text"] == f"Null and bell and escape here, {marker}"


def test_right_to_left_marks_and_emoji_give_audio_at_a_valid_url(server):
    text = f"Hello \u202eworld\u202c \u200fagain 😀 {unique_text('Emoji')}"
    resp = server.get("/tts?" + query(text=text))
    assert resp.status == 200
    body = resp.json()
    assert "\u202e" not in body["text"] and "\u200f" not in body["text"] and "😀" in body["text"]
    assert body["audio_url"] == f"{server.base}/audio/{body['hash']}.wav"
    audio = server.get(body["audio_url"].removeprefix(server.base))
    assert (audio.status, audio.headers["Content-Type"], audio.body[:4]) == (200, "audio/wav", b"RIFF")


@pytest.mark.parametrize("text", ["...", "?", "?!", ",,,", "—", "«»", "()", "... --- ..."])
def test_text_of_only_punctuation_is_a_json_400(server, text):
    assert_error(server.get("/tts?" + query(text=text)), 400, "invalid_request", "text has nothing to speak")
    assert_error(server.post("/tts", {"text": text}), 400, "invalid_request", "text has nothing to speak")


def test_text_of_only_invisible_characters_is_a_json_400(server):
    text = "\u200b\u200e\u202e\x00\x07 \t\n"
    assert_error(server.post("/tts", {"text": text}), 400, "invalid_request", "text is empty")


def test_a_hundred_thousand_characters_are_refused_before_any_synthesis(server, configured):
    text = "a" * 100_000
    assert_error(server.post("/tts", {"text": text}), 413, "body_too_large")
    # With room for the body, the text limit refuses it, before normalizing or synthesizing.
    inferences = configured.metric("tts_inferences_total")
    resp = configured.post("/tts", {"text": text})
    assert_error(resp, 413, "text_too_long", "text is longer than 5000 characters")
    assert configured.metric("tts_inferences_total") == inferences
    # In the query it overflows the request-target limit: a JSON 414, before any work.
    assert_error(server.get("/tts?" + query(text=text)), 414, "uri_too_long")
    assert server.get("/healthz").status == 200


def test_many_parallel_requests_of_one_client_get_429s_and_no_500(make_server):
    crowd = make_server(
        {
            "TTS__LIMITS__ENABLED": "true",
            "TTS__LIMITS__REQUESTS_BURST": "10",
            "TTS__LIMITS__REQUESTS_PER_MINUTE": "1",
        }
    )
    path = "/tts?" + query(text=unique_text("Crowd"))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: crowd.get(path), range(40)))
    assert Counter(resp.status for resp in answers) == {200: 10, 429: 30}
    assert len({resp.json()["hash"] for resp in answers if resp.status == 200}) == 1
    assert crowd.get("/healthz").status == 200
    assert crowd.get("/readyz").status == 200
