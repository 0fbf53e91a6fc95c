"""Spec of `/openapi.json`: a valid OpenAPI 3.1 document that describes every route, and real
answers (each status a route can give) that conform to it: status, content type, headers, body.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from typing import Any, cast

import jsonschema_rs
import pytest
import tornado.web
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from server.app import make_app
from server.openapi import Reply, openapi_document
from server.openapi import operation as declare
from server.request import MAX_SPEED, MIN_SPEED, SPEED_PRESETS
from server.schemas import Health
from server.services import Services
from server.settings import Settings, with_overrides
from tests.conftest import Response, ServerProcess, query, unique_text

KEY = "openapi-admin-key-" + "k" * 20
LIMITED_KEY = "openapi-limited-key-" + "k" * 20  # its own bucket, untouched by other tests
VOICE = "en_US-joe-medium"
SPEECH_OPERATIONS = [("get", "/tts"), ("post", "/tts"), ("get", "/tts/stream"), ("post", "/tts/stream")]
SPEECH_FIELDS = {"text", "speed", "voice", "speaker", "format", "text_format", "volume"}
ROUTE_FIELDS = {"/tts": {"timestamps"}, "/tts/stream": {"events"}}  # besides SPEECH_FIELDS
FORMATS = ["wav", "pcm", "mp3", "opus", "aac", "flac"]
LIMITED_OPERATIONS = [*SPEECH_OPERATIONS, ("get", "/audio/{hash}.{ext}"), ("head", "/audio/{hash}.{ext}")]
ADMIN_OPERATIONS = [
    ("get", "/admin/storage"),
    ("post", "/admin/cleanup"),
    ("delete", "/admin/audio/{hash}"),
    ("post", "/admin/purge"),
    ("get", "/admin/runtime"),
    ("get", "/admin/config"),
]


# -- checking an answer against the document -------------------------------------------------------


def follow(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The object a local `$ref` points at (or `node` itself)."""
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    # The components travel with the schema so its local $refs resolve.
    return jsonschema_rs.validator_for({"components": doc["components"], **schema})


def documented_response(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    if status == 405:
        assert method.lower() not in doc["paths"][path]
        return follow(doc, {"$ref": "#/components/responses/E405"})
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    return follow(doc, responses[str(status)])


def header_value(raw: str, schema: dict[str, Any]) -> Any:
    return int(raw) if schema.get("type") == "integer" else raw


def assert_conforms(doc: dict[str, Any], method: str, path: str, resp: Response) -> None:
    """The answer is one the document promises for this operation, headers and body included."""
    documented = documented_response(doc, method, path, resp.status)
    for name, header in documented.get("headers", {}).items():
        value = resp.headers.get(name)
        if value is None:
            assert not header["required"], f"{resp.status} lacks required header {name}"
            continue
        schema = header["schema"]
        assert validator(doc, schema).is_valid(header_value(value, schema)), f"{name}: {value!r}"
    if method.upper() == "HEAD" or resp.status == 304:
        assert resp.body == b""
        return
    content = documented.get("content", {})
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    assert media_type in content, f"{resp.status} with undocumented {media_type!r}"
    if media_type == "application/json":
        validator(doc, content[media_type]["schema"]).validate(json.loads(resp.body))


# -- the document itself ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc(server: ServerProcess) -> dict[str, Any]:
    resp = server.get("/openapi.json")
    assert resp.status == 200
    return cast(dict[str, Any], resp.json())


# The names each route's path parameters have in the document; every other one is a hash.
PATH_PARAMETERS = {
    "/docs/assets/([^/]+)$": ("{name}",),
    "/audio/([^/]*)\\.([^/.]*)$": ("{hash}", "{ext}"),
    "/jobs/([^/]+)$": ("{id}",),
    "/jobs/([^/]+)/cancel$": ("{id}",),
}


def openapi_path(pattern: str) -> str:
    """A route's regex as the document writes it: `/audio/([^/]*)\\.([^/.]*)` is `/audio/{hash}.{ext}`."""
    names = iter(PATH_PARAMETERS.get(pattern, ("{hash}",)))
    path = re.sub(r"\([^)]*\)", lambda _: next(names), pattern.removesuffix("$"))
    return path.replace("\\.", ".")


def implemented_methods(handler: type[tornado.web.RequestHandler]) -> set[str]:
    base = tornado.web.RequestHandler
    return {
        method.lower()
        for method in handler.SUPPORTED_METHODS
        if method != "OPTIONS" and getattr(handler, method.lower()) is not getattr(base, method.lower())
    }


def app_routes() -> Iterator[tuple[str, set[str]]]:
    # The route table needs no running services: it only stores them for the handlers.
    app = make_app(Settings(), cast(Services, None))
    for rule in app.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern  # type: ignore[attr-defined]
        # The catch-alls only say 401 (or 404) for unknown admin paths, and 404 for other /v1 paths.
        if pattern not in ("/admin/.*$", "/v1/.*$"):
            yield openapi_path(pattern), implemented_methods(rule.target)


def test_openapi_json_is_a_valid_openapi_3_1_document(server, doc):
    resp = server.get("/openapi.json")
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert doc["openapi"] == "3.1.0"
    errors = [str(error) for error in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert errors == []


def test_every_route_and_method_the_app_serves_is_documented_and_nothing_else(doc):
    served = {path: methods for path, methods in app_routes()}
    documented = {path: set(item) for path, item in doc["paths"].items()}
    assert documented == served


def test_text_max_length_follows_the_configured_limit(doc):
    assert doc["components"]["schemas"]["Text"]["minLength"] == 1
    assert doc["components"]["schemas"]["Text"]["maxLength"] == 5000
    settings = with_overrides(Settings(), synthesis={"max_text_chars": 64})
    small = openapi_document(make_app(settings, cast(Services, None)).wildcard_router.rules, settings)
    assert small["components"]["schemas"]["Text"]["maxLength"] == 64


def test_body_limit_follows_the_configured_limit():
    settings = with_overrides(Settings(), server={"max_body_bytes": 4096})
    small = openapi_document(make_app(settings, cast(Services, None)).wildcard_router.rules, settings)
    assert "4096 bytes" in small["components"]["responses"]["E413"]["description"]
    assert "4096 bytes" in small["info"]["description"]


def test_a_handler_that_declares_an_operation_appears_in_the_document():
    class EchoHandler(tornado.web.RequestHandler):
        @declare(
            operation_id="echo", query=Health, replies={200: Reply("Echo", {"application/json": Health})}
        )
        def get(self) -> None:
            """Say it back."""

    app = tornado.web.Application([(r"/v9/echo", EchoHandler)])
    document = openapi_document(app.wildcard_router.rules, Settings())
    echo = document["paths"]["/v9/echo"]["get"]
    assert (echo["summary"], echo["operationId"]) == ("Say it back.", "echo")
    assert echo["parameters"] == [
        {
            "name": "status",
            "in": "query",
            "required": True,
            "schema": {"const": "ok", "title": "Status", "type": "string"},
        }
    ]
    assert echo["responses"]["200"]["content"] == {
        "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
    }
    assert "Health" in document["components"]["schemas"]


def test_speed_is_a_preset_or_a_rate_from_a_quarter_to_four(doc):
    schemas = doc["components"]["schemas"]
    assert schemas["Speed"] == {
        "anyOf": [{"$ref": "#/components/schemas/SpeedPreset"}, {"$ref": "#/components/schemas/SpeedRate"}]
    }
    assert schemas["SpeedPreset"]["enum"] == [*SPEED_PRESETS, ""]
    rate = schemas["SpeedRate"]
    assert (
        (rate["type"], rate["minimum"], rate["maximum"])
        == ("number", 0.25, 4.0)
        == ("number", MIN_SPEED, MAX_SPEED)
    )


def test_voice_is_one_of_the_loaded_voices(doc):
    assert doc["components"]["schemas"]["Voice"]["enum"] == [VOICE, ""]


@pytest.mark.parametrize(("method", "path"), SPEECH_OPERATIONS)
def test_speech_operations_document_their_fields_and_every_status(doc, method, path):
    operation = doc["paths"][path][method]
    assert set(operation["responses"]) == {"200", "400", "401", "413", "429", "503"}
    if method == "post":
        body = follow(doc, operation["requestBody"]["content"]["application/json"]["schema"])
        assert set(body["properties"]) == SPEECH_FIELDS | ROUTE_FIELDS[path]
        assert body["required"] == ["text"]
        assert body["additionalProperties"] is False
        return
    names = {follow(doc, parameter)["name"]: follow(doc, parameter) for parameter in operation["parameters"]}
    assert set(names) == SPEECH_FIELDS | ROUTE_FIELDS[path]
    assert names["text"]["required"] is True
    assert not any(names[name]["required"] for name in SPEECH_FIELDS - {"text"})


@pytest.mark.parametrize(("path", "default"), [("/tts", "wav"), ("/tts/stream", "pcm")])
def test_format_is_one_of_six_with_a_default_per_route(doc, path, default):
    for method in ("get", "post"):
        operation = doc["paths"][path][method]
        if method == "get":
            fields = {parameter["name"]: parameter["schema"] for parameter in operation["parameters"]}
        else:
            fields = follow(doc, operation["requestBody"]["content"]["application/json"]["schema"])[
                "properties"
            ]
        assert fields["format"]["default"] == default
        assert follow(doc, fields["format"])["enum"] == FORMATS


def test_query_parameters_are_never_documented_as_null(doc):
    for item in doc["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                assert "null" not in json.dumps(parameter["schema"]), parameter


@pytest.mark.parametrize(("method", "path"), LIMITED_OPERATIONS)
def test_rate_limited_operations_document_429_with_retry_after_and_ratelimit_headers(doc, method, path):
    operation = doc["paths"][path][method]
    limited = follow(doc, operation["responses"]["429"])
    assert limited["headers"]["Retry-After"]["required"] is True
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(limited["headers"])
    ok = follow(doc, operation["responses"]["200"])
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(ok["headers"])


@pytest.mark.parametrize(("method", "path"), ADMIN_OPERATIONS)
def test_admin_operations_need_the_api_key_header(doc, method, path):
    operation = doc["paths"][path][method]
    assert operation["security"] == [{"ApiKey": []}]
    assert {"401", "404"} <= set(operation["responses"])
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


def test_every_error_answer_is_the_json_error_shape(doc):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readyz":
                    schema = follow(doc, response)["content"]["application/json"]["schema"]
                    shape = "OpenAIError" if path.startswith("/v1/") else "Error"  # each door its own
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, f"{method} {path} {status}"
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert follow(doc, error["properties"]["error"])["required"] == ["code", "message"]


# -- real answers conform -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(server: ServerProcess) -> tuple[str, int, str]:
    """A stored entry: hash, WAV size, ETag."""
    key = server.get("/tts?" + query(text=unique_text("Documented"))).json()["hash"]
    resp = server.get(f"/audio/{key}.wav")
    return key, len(resp.body), resp.headers["ETag"]


def test_answers_of_the_public_routes_conform(server, doc, stored):
    key, _, etag = stored
    audio = f"/audio/{key}.wav"
    calls: list[tuple[str, str, Response]] = [
        ("GET", "/", server.get("/")),
        ("GET", "/tts", server.get("/tts?" + query(text=unique_text("Conform"), speed=1.5))),
        ("GET", "/tts", server.get("/tts?" + query(text=unique_text("Conform"), speed="slow", voice=VOICE))),
        ("POST", "/tts", server.post("/tts", {"text": unique_text("Conform"), "speed": None})),
        ("GET", "/tts/stream", server.get("/tts/stream?" + query(text=unique_text("Conform")))),
        ("GET", "/tts/stream", server.get("/tts/stream?" + query(text=unique_text("Conform"), format="wav"))),
        ("POST", "/tts/stream", server.post("/tts/stream", {"text": unique_text("Conform"), "speed": 2})),
        ("GET", "/audio/{hash}.{ext}", server.get(audio)),
        ("HEAD", "/audio/{hash}.{ext}", server.request_raw("HEAD", audio)),
        ("GET", "/audio/{hash}.{ext}", server.get(audio, headers={"Range": "bytes=0-99"})),
        ("GET", "/audio/{hash}.{ext}", server.get(audio, headers={"If-None-Match": etag})),
        ("GET", "/voices", server.get("/voices")),
        ("GET", "/healthz", server.get("/healthz")),
        ("GET", "/readyz", server.get("/readyz")),
        ("GET", "/metrics", server.get("/metrics")),
        ("GET", "/openapi.json", server.get("/openapi.json")),
    ]
    assert [resp.status for _, _, resp in calls] == [200] * 9 + [206, 304] + [200] * 5
    for method, path, resp in calls:
        assert_conforms(doc, method, path, resp)


def test_error_answers_of_the_public_routes_conform(server, doc, stored):
    key, size, _ = stored
    calls: list[tuple[str, str, Response]] = [
        ("GET", "/tts", server.get("/tts?" + query(text="... --- ..."))),
        ("GET", "/tts", server.get("/tts?" + query(text="Hello.", speed=9))),
        ("GET", "/tts", server.get("/tts?" + query(text="Hello.", voice="nobody"))),
        ("POST", "/tts", server.post("/tts", b"{not json")),
        ("GET", "/tts/stream", server.get("/tts/stream?" + query(text="Hello.", format="ogg"))),
        ("POST", "/tts/stream", server.post("/tts/stream", {"text": "Hello.", "format": "ogg"})),
        ("GET", "/tts", server.get("/tts?" + query(text="Hello.", format="m4a"))),
        ("GET", "/tts", server.get("/tts?" + query(text="a" * 5001))),
        ("POST", "/tts", server.post("/tts", {"text": "a" * 5001})),
        ("POST", "/tts", server.post("/tts", {"text": "a" * 70_000})),
        ("GET", "/audio/{hash}.{ext}", server.get(f"/audio/{'0' * 64}.wav")),
        ("HEAD", "/audio/{hash}.{ext}", server.request_raw("HEAD", f"/audio/{'0' * 64}.wav")),
        ("GET", "/audio/{hash}.{ext}", server.get(f"/audio/{key}.wav", headers={"Range": f"bytes={size}-"})),
        ("GET", "/admin/storage", server.get("/admin/storage")),
        ("DELETE", "/tts", server.request_raw("DELETE", "/tts")),
        ("PUT", "/healthz", server.request_raw("PUT", "/healthz", body=b"")),
    ]
    assert [resp.status for _, _, resp in calls] == [400] * 7 + [413] * 3 + [404, 404, 416, 404, 405, 405]
    for method, path, resp in calls:
        assert_conforms(doc, method, path, resp)
    assert calls[-1][2].headers["Allow"] == "GET, OPTIONS"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Admin keys, and limits on with a tiny request bucket."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("guarded"),
        {
            "TTS_ADMIN_API_KEYS": f"{KEY},{LIMITED_KEY}",
            "TTS__LIMITS__ENABLED": "true",
            "TTS__LIMITS__REQUESTS_BURST": "3",
            "TTS__LIMITS__REQUESTS_PER_MINUTE": "1",
        },
    ).start()
    yield proc
    proc.stop()


def admin(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def test_admin_answers_conform(guarded, doc):
    key = "0" * 64
    calls: list[tuple[str, str, Response]] = [
        ("GET", "/admin/storage", guarded.get("/admin/storage", headers=admin())),
        ("POST", "/admin/cleanup", guarded.post("/admin/cleanup", {}, headers=admin())),
        (
            "DELETE",
            "/admin/audio/{hash}",
            guarded.request_raw("DELETE", f"/admin/audio/{key}", headers=admin()),
        ),
        ("POST", "/admin/purge", guarded.post("/admin/purge", {"hash": key}, headers=admin())),
        ("POST", "/admin/purge", guarded.post("/admin/purge", {"all": True}, headers=admin())),
        ("GET", "/admin/runtime", guarded.get("/admin/runtime", headers=admin())),
        ("GET", "/admin/config", guarded.get("/admin/config", headers=admin())),
        ("GET", "/admin/config", guarded.get("/admin/config", headers=admin("wrong-key-wrong-key"))),
        ("POST", "/admin/purge", guarded.post("/admin/purge", {"hash": "x"}, headers=admin())),
        (
            "DELETE",
            "/admin/audio/{hash}",
            guarded.request_raw("DELETE", "/admin/audio/nothex", headers=admin()),
        ),
    ]
    assert [resp.status for _, _, resp in calls] == [200] * 7 + [401, 400, 404]
    for method, path, resp in calls:
        assert_conforms(doc, method, path, resp)


def test_rate_limited_answer_conforms(guarded, doc):
    answers = [guarded.get(f"/audio/{'0' * 64}.wav", headers=admin(LIMITED_KEY)) for _ in range(4)]
    assert [resp.status for resp in answers] == [404, 404, 404, 429]
    for resp in answers:
        assert_conforms(doc, "GET", "/audio/{hash}.{ext}", resp)
    assert answers[-1].headers["RateLimit-Remaining"] == "0"


def test_a_response_that_breaks_the_document_is_caught(doc):
    # The checker itself: a body the schema does not allow must not pass.
    headers = http.client.HTTPMessage()
    for name, value in [
        ("Content-Type", "application/json"),
        ("X-Request-ID", "x"),
        ("X-Content-Type-Options", "nosniff"),
    ]:
        headers[name] = value
    with pytest.raises(jsonschema_rs.ValidationError):
        assert_conforms(doc, "GET", "/healthz", Response(200, headers, b'{"status": "ok", "extra": 1}'))
    with pytest.raises(AssertionError, match="does not document 201"):
        assert_conforms(doc, "GET", "/healthz", Response(201, headers, b'{"status": "ok"}'))
