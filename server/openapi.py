"""The OpenAPI 3.1 document, generated from the route table and the models each handler declares.

A handler method declares what it takes and answers with `@operation(...)` (its query, body and path
models, its replies and the error statuses it can give); `openapi_document(rules, settings, voices)`
walks the application's routes, collects those declarations and lets pydantic write the schemas of
the models in `server.schemas`. A new front door appears in the document by declaring its
operations and the shape of its errors (`error_model`: OpenAI's on `/v1`). Limits that depend on
configuration (text length, body size) come from `settings`, and the voice enum from the voices
actually loaded, so the document never promises what this server would refuse. The test suite
checks real responses against it and fuzzes the server with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import tornado.routing
import tornado.web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.schemas import COMPONENT, Error, server_schemas
from server.settings import Settings

OPENAPI_VERSION: Final = "3.1.0"
REF_TEMPLATE: Final = "#/components/schemas/{model}"
METHODS: Final = ("get", "head", "post", "put", "delete", "patch")

Schema = dict[str, Any]
# A body: one model, several (any one of them), or a raw schema for what is not a model.
Content = type[BaseModel] | tuple[type[BaseModel], ...] | Schema


@dataclass(frozen=True)
class Header:
    description: str
    required: bool = False
    schema: Schema = field(default_factory=lambda: {"type": "string"})

    def document(self) -> Schema:
        return {"description": self.description, "required": self.required, "schema": self.schema}


def integer_header(description: str, required: bool = False) -> Header:
    return Header(description, required, {"type": "integer", "minimum": 0})


COMMON_HEADERS: Final = {
    "X-Request-ID": Header("The request's id (the client's, when it sent a safe one)", True),
    "X-Content-Type-Options": Header("Always nosniff", True, {"type": "string", "enum": ["nosniff"]}),
}
RATE_LIMIT_HEADERS: Final = {
    "RateLimit-Limit": integer_header("Size of the client's bucket (its burst)"),
    "RateLimit-Remaining": integer_header("Tokens left in the bucket"),
    "RateLimit-Reset": integer_header("Seconds until the bucket is full again"),
}
RETRY_AFTER: Final = {"Retry-After": integer_header("Seconds to wait before retrying", required=True)}


@dataclass(frozen=True)
class Reply:
    """One documented answer: its description, bodies by media type, and headers."""

    description: str
    content: Mapping[str, Content] = field(default_factory=dict)
    headers: Mapping[str, Header] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """What one handler method takes and answers (its summary is the method's docstring)."""

    operation_id: str
    replies: Mapping[int, Reply]
    query: type[BaseModel] | None = None
    body: Content | None = None
    path: Mapping[str, Schema] = field(default_factory=dict)
    headers: Mapping[str, Header] = field(default_factory=dict)  # request headers it reads
    errors: tuple[int, ...] = ()  # statuses answered with the shared error replies
    error_model: type[BaseModel] = Error  # the body of those replies: each front door has its own
    description: str | None = None
    admin: bool = False
    tags: tuple[str, ...] = ()


F = TypeVar("F", bound=Callable[..., Any])


def operation(**declared: Any) -> Callable[[F], F]:
    """Attach an `Operation` to a handler method, for the document."""

    def mark(method: F) -> F:
        method.operation = Operation(**declared)  # type: ignore[attr-defined]
        return method

    return mark


def declared_operations(handler: type[tornado.web.RequestHandler]) -> dict[str, tuple[Operation, str]]:
    """The handler's documented methods: (operation, summary) by lower-case method name."""
    found = {}
    for method in METHODS:
        function = getattr(handler, method, None)
        declared = getattr(function, "operation", None)
        if isinstance(declared, Operation):
            summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
            found[method] = (declared, summary)
    return found


def path_template(pattern: str, names: Iterable[str]) -> str:
    """A route's regex as the document writes it: `/audio/([^/]*)\\.wav` is `/audio/{hash}.wav`."""
    pending = iter(names)
    path = re.sub(r"\([^)]*\)", lambda _: "{" + next(pending) + "}", pattern.removesuffix("$"))
    return path.replace("\\.", ".")


# -- building the document ---------------------------------------------------------------------------


def _models(content: Content | None) -> tuple[type[BaseModel], ...]:
    if isinstance(content, type):
        return (content,)
    if isinstance(content, tuple):
        return content
    return ()


class _Schemas:
    """Every model the operations name, written once by pydantic into components/schemas."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        requests: set[type[BaseModel]] = set()
        responses: set[type[BaseModel]] = {Error}
        for op in operations:
            responses.add(op.error_model)
            requests.update(_models(op.body))
            if op.query is not None:
                requests.add(op.query)
            for reply in op.replies.values():
                for content in reply.content.values():
                    responses.update(_models(content))
        keys = [(model, "validation") for model in sorted(requests, key=lambda m: m.__name__)]
        keys += [(model, "serialization") for model in sorted(responses, key=lambda m: m.__name__)]
        self.refs, top = models_json_schema(keys, ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
        self.components: dict[str, Schema] = top.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: str) -> Schema:
        return self.refs[(model, mode)]  # type: ignore[index]

    def content(self, content: Content, mode: str) -> Schema:
        if isinstance(content, dict):
            return content
        refs = [self.ref(model, mode) for model in _models(content)]
        return refs[0] if len(refs) == 1 else {"oneOf": refs}

    def query_parameters(self, model: type[BaseModel]) -> list[Schema]:
        schema = self.components[model.__name__]
        required = set(schema.get("required", []))
        return [
            {"name": name, "in": "query", "required": name in required, "schema": _without_null(prop)}
            for name, prop in schema["properties"].items()
        ]


def _resolved(node: Any) -> Any:
    """The tree with each `component(name)` placeholder as the `$ref` to that component."""
    if isinstance(node, dict):
        if COMPONENT in node:
            # pydantic's title is the field's; the component's own schema says what it is.
            rest = {key: value for key, value in node.items() if key not in (COMPONENT, "title")}
            return {"$ref": REF_TEMPLATE.format(model=node[COMPONENT]), **rest}
        return {key: _resolved(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolved(item) for item in node]
    return node


def _without_null(schema: Schema) -> Schema:
    """A query argument is never JSON null: absent is how it says "none"."""
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    if rest.get("default", 0) is None:
        del rest["default"]
    options = [option for option in schema.get("anyOf", []) if option != {"type": "null"}]
    if not options:
        return rest
    return {**rest, **options[0]} if len(options) == 1 else {**rest, "anyOf": options}


def _reply(schemas: _Schemas, reply: Reply) -> Schema:
    headers = {**COMMON_HEADERS, **reply.headers}
    answer: Schema = {
        "description": reply.description,
        "headers": {name: header.document() for name, header in headers.items()},
    }
    if reply.content:
        answer["content"] = {
            media: {"schema": schemas.content(content, "serialization")}
            for media, content in reply.content.items()
        }
    return answer


def _error_reference(model: type[BaseModel], status: int) -> str:
    """The name of a shared error reply: `E400` in the native shape, `OpenAIError400` in another."""
    return f"E{status}" if model is Error else f"{model.__name__}{status}"


def _error_replies(settings: Settings, model: type[BaseModel] = Error) -> dict[int, Reply]:
    """The shared error answers, each the JSON error body with the headers that status carries."""
    text, body = settings.synthesis.max_text_chars, settings.server.max_body_bytes
    json = {"application/json": model}

    def error(description: str, headers: Mapping[str, Header] | None = None) -> Reply:
        return Reply(description, json, headers or {})

    return {
        400: error(
            "The request is malformed: a bad field, unknown voice, text with nothing to speak, or "
            "invalid JSON or UTF-8",
            RATE_LIMIT_HEADERS,
        ),
        401: error(
            "Missing or wrong API key: X-API-Key for /admin/; when public API keys are configured, "
            "Authorization: Bearer <key> or X-API-Key for speech, audio and /v1",
            {"WWW-Authenticate": Header("How to authenticate", True)},
        ),
        404: error("No such resource", RATE_LIMIT_HEADERS),
        405: error(
            "The path does not take this method (any method its entry does not list)",
            {"Allow": Header("The methods it takes", True)},
        ),
        413: error(f"Text longer than {text} characters, or a body over {body} bytes", RATE_LIMIT_HEADERS),
        416: error(
            "The Range lies outside the file",
            {
                "Content-Range": Header(
                    "bytes */SIZE", True, {"type": "string", "pattern": r"^bytes \*/\d+$"}
                ),
                **RATE_LIMIT_HEADERS,
            },
        ),
        429: error(
            "The client's bucket is empty, or it has too many streams open",
            {**RETRY_AFTER, **RATE_LIMIT_HEADERS},
        ),
        503: error(
            "Saturated (too many syntheses in progress), still loading, or storage unavailable",
            {**RETRY_AFTER, **RATE_LIMIT_HEADERS},
        ),
    }


def _operation(schemas: _Schemas, declared: Operation, summary: str, method: str) -> Schema:
    doc: Schema = {"summary": summary, "operationId": declared.operation_id}
    if declared.description:
        doc["description"] = declared.description
    if declared.admin:
        doc["security"] = [{"ApiKey": []}]
    tags = [*(["admin"] if declared.admin else []), *declared.tags]
    if tags:
        doc["tags"] = tags
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in declared.path.items()
    ]
    if declared.query is not None:
        parameters += schemas.query_parameters(declared.query)
    parameters += [
        {"name": name, "in": "header", **header.document()} for name, header in declared.headers.items()
    ]
    if parameters:
        doc["parameters"] = parameters
    if declared.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.content(declared.body, "validation")}},
        }
    responses = {str(status): _reply(schemas, reply) for status, reply in declared.replies.items()}
    for status in declared.errors:
        name = _error_reference(declared.error_model, status)
        responses[str(status)] = {"$ref": f"#/components/responses/{name}"}
    doc["responses"] = responses
    return doc


def openapi_document(
    rules: Iterable[tornado.routing.Rule], settings: Settings, voices: Iterable[str] = ()
) -> dict[str, Any]:
    """The document for the routes `rules` of a server running with `settings`, speaking `voices`."""
    routes = []
    for rule in rules:
        declared = declared_operations(rule.target)  # type: ignore[arg-type]
        if declared:
            pattern = rule.matcher.regex.pattern  # type: ignore[attr-defined]
            names = next(iter(declared.values()))[0].path
            routes.append((path_template(pattern, names), declared))
    operations = [op for _, declared in routes for op, _ in declared.values()]
    schemas = _Schemas(operations)
    paths = {
        path: {method: _operation(schemas, op, summary, method) for method, (op, summary) in declared.items()}
        for path, declared in routes
    }
    errors = {_error_reference(Error, status): reply for status, reply in _error_replies(settings).items()}
    for op in operations:  # another front door's shape: the replies its operations name
        if op.error_model is not Error:
            replies = _error_replies(settings, op.error_model)
            errors.update({_error_reference(op.error_model, status): replies[status] for status in op.errors})
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Text-to-speech server",
            "version": "1",
            "description": (
                'Every error is JSON: {"error": {"code", "message"}}, and on /v1 OpenAI\'s '
                '{"error": {"message", "type", "param", "code"}}. A method a path does not '
                "list answers 405 with an Allow header. Speech and audio requests are rate-limited "
                "per client (address, or API key): 429 with Retry-After and RateLimit-* headers. "
                "When public API keys are configured, speech, audio and /v1 need one "
                "(Authorization: Bearer <key> or X-API-Key). "
                f"Request bodies over {settings.server.max_body_bytes} bytes get 413."
            ),
        },
        "servers": [{"url": settings.server.public_url.rstrip("/") or "/"}],
        "tags": [
            {"name": "admin", "description": "Needs X-API-Key; 404 when no keys are configured"},
            {"name": "openai", "description": "OpenAI-compatible: the official SDKs work against /v1"},
        ],
        "paths": paths,
        "components": {
            "schemas": {
                **schemas.components,
                **server_schemas(settings.synthesis.max_text_chars, list(voices)),
            },
            "responses": {name: _reply(schemas, reply) for name, reply in errors.items()},
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }
    return _resolved(document)  # type: ignore[no-any-return]


def _as_30(node: Any) -> Any:
    if isinstance(node, list):
        return [_as_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _as_30(value) for key, value in node.items() if key != "const"}
    if "const" in node:
        converted["enum"] = [node["const"]]
    options = converted.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del converted["anyOf"]
        converted.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        converted["nullable"] = True
    if "$ref" in converted and len(converted) > 1:
        # 3.0 ignores a $ref's siblings; keep them by wrapping the reference.
        converted = {"allOf": [{"$ref": converted.pop("$ref")}], **converted}
    return converted


def openapi_30(document: dict[str, Any]) -> dict[str, Any]:
    """The same document in OpenAPI 3.0 terms, for viewers that read no 3.1 (Swagger UI 4).

    What this API's schemas use of 3.1 has a 3.0 spelling: `const` is a one-value `enum`, a
    `{"type": "null"}` alternative is `nullable`. /openapi.json stays the 3.1 original.
    """
    converted: dict[str, Any] = _as_30(document)
    converted["openapi"] = "3.0.3"
    return converted
