"""Fuzzing a real server with schemathesis, driven by the server's own /openapi.json.

Every documented operation gets schema-valid and schema-violating requests (bounded: a few dozen
per operation, no shrinking, a timeout on every call); each answer must be no 500, arrive, and
match the document: a documented status, content type, headers and body. The texts stay short
(`max_text_chars` 64) so the syntheses they cause are quick.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from tests.conftest import RedisProcess, ServerProcess, query

KEY = "fuzz-admin-key-" + "k" * 24
MAX_TEXT_CHARS = 64
EXAMPLES = 25
CALL_TIMEOUT_S = 30  # a hung request fails the run instead of stalling it
STORED_TEXT = "Fuzzing needs one stored file."
OPERATIONS = [
    "GET /",
    "GET /tts",
    "POST /tts",
    "GET /tts/stream",
    "POST /tts/stream",
    "GET /audio/{hash}.{ext}",
    "HEAD /audio/{hash}.{ext}",
    "GET /audio/{hash}.vtt",
    "GET /audio/{hash}.srt",
    "GET /voices",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /docs",
    "GET /docs/openapi-3.0.json",
    "GET /docs/assets/{name}",
    "GET /admin/storage",
    "POST /admin/cleanup",
    "DELETE /admin/audio/{hash}",
    "POST /admin/purge",
    "GET /admin/runtime",
    "GET /admin/config",
    "POST /v1/audio/speech",
    "GET /v1/models",
    "GET /v1/audio/models",
    "GET /v1/audio/voices",
    "POST /jobs",
    "GET /jobs",
    "GET /jobs/{id}",
    "DELETE /jobs/{id}",
    "POST /jobs/{id}/cancel",
]
# Beyond schemathesis's defaults for schema-valid requests: whether a text is speakable (not only
# punctuation, not empty once control characters go) is beyond JSON Schema, so it may still get
# 400, and 413 counts the normalized text; a valid Range can still lie past the end of a file (416).
# A fuzzed Idempotency-Key may come back with another body: 422.
ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "416", "422", "429", "5xx"]
CONFIG = schemathesis.Config.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}}}
)
# Where "schema-violating" requests are rightly accepted, so negative_data_rejection is off: control
# and format characters do not count toward the text's maxLength (a longer raw text can pass), and
# a "wrong type" such as an empty list for speed goes on the wire as no speed at all.
LENIENT_PATHS = {"/tts", "/tts/stream"}


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess
) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("fuzz"),
        {
            "TTS__SYNTHESIS__MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "TTS__JOBS__MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "TTS_ADMIN_API_KEYS": KEY,
            # /jobs needs the queue: with Redis they answer for real instead of 503.
            "TTS__REDIS__URL": redis_server.url,
            "TTS__REDIS__KEY_PREFIX": "fuzz:",
        },
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(fuzz_server: ServerProcess):
    return schemathesis.openapi.from_url(f"{fuzz_server.base}/openapi.json", config=CONFIG)


@pytest.fixture
def stored(fuzz_server: ServerProcess) -> tuple[str, str]:
    """A hash with a file behind it, and its ETag (made again if a fuzzed purge removed it)."""
    resp = fuzz_server.get("/tts?" + query(text=STORED_TEXT))
    assert resp.status == 200, resp.body
    key = str(resp.json()["hash"])
    return key, fuzz_server.get(f"/audio/{key}.wav").headers["ETag"]


def conditional_headers(etag: str) -> st.SearchStrategy[dict[str, str]]:
    """Range and validators that mean something to /audio: byte ranges and the real ETag."""
    ranges = st.from_regex(r"bytes=([0-9]{1,6}-[0-9]{0,6}|-[0-9]{1,6})", fullmatch=True)
    return st.fixed_dictionaries(
        {"Range": ranges},
        optional={
            "If-None-Match": st.sampled_from([etag, '"stale"', f'W/"x", {etag}']),
            "If-Range": st.sampled_from([etag, '"stale"']),
        },
    )


def with_headers(case, headers: dict[str, str]):
    case.headers = {**(case.headers or {}), **headers}
    return case


def test_every_documented_operation_is_fuzzed(api):
    # /openapi.json itself is left out by schemathesis; test_openapi checks it.
    assert sorted(op.ok().label for op in api.get_all_operations()) == sorted(OPERATIONS)


def fuzz(base: str, strategy: st.SearchStrategy, excluded: list) -> Counter[int]:
    """Run one bounded fuzzing round; the statuses seen, by count."""
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        phases=[Phase.generate],  # no shrinking: a failure is reported as found
        deadline=None,  # syntheses vary with the machine's load; CALL_TIMEOUT_S bounds each call
        derandomize=True,  # the same examples every run: a red run is a real finding
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=strategy)
    def run(case) -> None:
        response = case.call_and_validate(
            base_url=base, headers={"X-API-Key": KEY}, excluded_checks=excluded, timeout=CALL_TIMEOUT_S
        )
        statuses[response.status_code] += 1

    run()
    return statuses


@pytest.mark.parametrize("label", OPERATIONS)
def test_fuzzing_finds_no_server_error_hang_or_answer_outside_the_document(api, fuzz_server, stored, label):
    operation = api.find_operation_by_label(label)
    rounds = [st.one_of([operation.as_strategy(mode) for mode in GenerationMode])]
    if "{hash}" in operation.path:
        # Random hashes only ever find 404; a real one, with real ranges and ETags, reaches
        # 206, 304 and 416 (and for the admin DELETE, a real deletion).
        key, etag = stored
        real = operation.as_strategy(path_parameters={"hash": key})
        rounds.append(st.builds(with_headers, real, conditional_headers(etag)))
    excluded = [negative_data_rejection] if operation.path in LENIENT_PATHS else []
    started = time.monotonic()
    statuses: Counter[int] = sum(
        (fuzz(fuzz_server.base, strategy, excluded) for strategy in rounds), Counter()
    )
    print(f"{label}: {statuses.total()} examples in {time.monotonic() - started:.1f}s {dict(statuses)}")
    assert statuses.total() >= 1
    assert not any(status >= 500 for status in statuses)
    assert fuzz_server.get("/healthz").status == 200
