"""The base handler: JSON errors mapped once, request ids, CORS, security headers, access log."""

from __future__ import annotations

import json
import time
import traceback
import uuid
from asyncio import Future
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import tornado.escape
import tornado.httputil
import tornado.web
from loguru import logger
from pydantic import BaseModel

from server.auth import KeyRing
from server.clients import client_address
from server.errors import (
    BodyTooLarge,
    HeadersTooLarge,
    InvalidRequest,
    NotFound,
    RateLimited,
    TTSError,
    Unauthorized,
    UriTooLong,
)
from server.logs import access
from server.schemas import dump, native_error
from server.services import Services

if TYPE_CHECKING:
    from server.handlers.answers import AnswerMemo

REQUEST_ID_HEADER: Final = "X-Request-ID"
_SAFE_REQUEST_ID: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
ANY_ORIGIN: Final = "*"
# Beyond the CORS-safelisted ones, the response headers a browser client may read.
EXPOSED_HEADERS: Final = (
    "X-Request-ID, X-Audio-Sample-Rate, X-Audio-Channels, X-Audio-Format, X-Audio-Hash, X-Cache, "
    "Content-Length, Content-Range, ETag, Retry-After, RateLimit-Limit, RateLimit-Remaining, "
    "RateLimit-Reset"
)


def request_id_of(headers: tornado.httputil.HTTPHeaders) -> str:
    """The client's X-Request-ID when it is short and plain (it is logged and echoed), else a new one."""
    given = headers.get(REQUEST_ID_HEADER, "")
    valid = 0 < len(given) <= 128 and set(given) <= _SAFE_REQUEST_ID
    return given if valid else uuid.uuid4().hex


def presented_key(headers: tornado.httputil.HTTPHeaders) -> str | None:
    """The API key the client sent: `Authorization: Bearer <key>` (OpenAI's SDKs) or `X-API-Key`."""
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("X-API-Key")


def check_header_sizes(uri: str, headers: tornado.httputil.HTTPHeaders, max_bytes: int) -> None:
    """414 or 431 past `server.max_header_bytes`. Tornado reads header blocks up to a hard cap far
    above ours (worker.HEADER_HARD_CAP_BYTES), so that these answer with our JSON instead of a
    dropped connection."""
    if len(uri) > max_bytes:
        raise UriTooLong(f"the request target is longer than {max_bytes} bytes")
    if sum(len(name) + len(value) + 4 for name, value in headers.get_all()) > max_bytes:
        raise HeadersTooLarge(f"the request headers are larger than {max_bytes} bytes")


def log_answered(
    services: Services,
    route: str,
    request: tuple[str, str, str, str | None],
    status: int,
    elapsed_s: float,
    details: Mapping[str, Any],
) -> None:
    """One answered request's metrics and access line; `request`: its id, method, path and client,
    `details`: the cache tier, voice and text length where known (None: left out)."""
    request_id, method, path, client = request
    services.metrics.answered(route, status, elapsed_s)
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(elapsed_s * 1000, 2),
    }
    fields.update((name, value) for name, value in details.items() if value is not None)
    fields["client"] = client
    access(f"{method} {path} {status}", fields)


def _framework_error(status: int, code: str, message: str) -> TTSError:
    """An error Tornado raised (or an unexpected one) as ours, so each front door maps one type."""
    error = TTSError(message)
    error.status, error.code = status, code
    return error


class BaseHandler(tornado.web.RequestHandler):
    route: str = "other"  # the metrics label: a route pattern, never a raw path

    @property
    def services(self) -> Services:
        return self.application.settings["services"]  # type: ignore[no-any-return]

    # -- lifecycle ---------------------------------------------------------------------------

    def prepare(self) -> None:
        self.started = time.perf_counter()
        self.cache_tier: str | None = None
        self.voice: str | None = None
        self.text_chars: int | None = None
        self.services.lifecycle.in_flight += 1
        self._counted = True
        server = self.services.settings.server
        check_header_sizes(self.request.uri or "", self.request.headers, server.max_header_bytes)
        limit = self.max_body_bytes()
        if len(self.request.body) > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")

    def max_body_bytes(self) -> int:
        """The largest body this route takes (413 beyond); /jobs takes whole documents."""
        return self.services.settings.server.max_body_bytes

    def on_finish(self) -> None:
        self._done()

    def on_connection_close(self) -> None:
        self._done()

    def _done(self) -> None:
        if not getattr(self, "_counted", False):
            return
        self._counted = False
        lifecycle = self.services.lifecycle
        lifecycle.in_flight -= 1
        if not lifecycle.in_flight:
            lifecycle.trim.idle()
        request = (self.request_id, self.request.method or "", self.request.path, self.request.remote_ip)
        elapsed = time.perf_counter() - self.started
        log_answered(self.services, self.route, request, self.get_status(), elapsed, self.access_details())

    def access_details(self) -> dict[str, Any]:
        """What the access line tells of the work: the cache tier, voice and text length."""
        return {"cache": self.cache_tier or None, "voice": self.voice or None, "text_chars": self.text_chars}

    # -- headers -----------------------------------------------------------------------------

    @property
    def request_id(self) -> str:
        if not hasattr(self, "_request_id"):
            self._request_id = request_id_of(self.request.headers)
        return self._request_id

    def set_default_headers(self) -> None:
        self.set_header(REQUEST_ID_HEADER, self.request_id)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")
        allowed = self.services.settings.server.cors_origins
        if allowed and ANY_ORIGIN not in allowed:
            # The answer depends on the Origin, so no cache may hand one origin's answer to another.
            self.add_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if origin is None or origin == "null":
            return  # "null" is what sandboxed frames and file: pages send: never trusted
        if ANY_ORIGIN in allowed:
            # Never with Allow-Credentials: "*" is only for public, cookie-less use.
            self.set_header("Access-Control-Allow-Origin", ANY_ORIGIN)
        elif origin in allowed:
            self.set_header("Access-Control-Allow-Origin", origin)
        else:
            return
        self.set_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)

    def options(self, *args: Any) -> None:
        """CORS preflight: allowed origins get the methods and headers they may use."""
        if "Access-Control-Allow-Origin" in self._headers:
            self.set_header("Access-Control-Allow-Methods", "GET, POST, HEAD, OPTIONS")
            self.set_header(
                "Access-Control-Allow-Headers", "Content-Type, X-Request-ID, X-API-Key, Authorization, Range"
            )
            self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)

    # -- who is asking ---------------------------------------------------------------------------

    @property
    def client_address(self) -> str:
        return client_address(
            self.request.remote_ip or "",
            self.request.headers.get("X-Forwarded-For"),
            self.services.trusted_proxies,
        )

    @property
    def presented_key(self) -> str | None:
        return presented_key(self.request.headers)

    @property
    def client_id(self) -> str:
        """The rate-limit identity: a recognized API key (admin or public), else the client's address."""
        key = self.presented_key
        if key and (self.services.keyring.matches(key) or self.services.api_keys.matches(key)):
            return f"key:{KeyRing.fingerprint(key)}"
        return f"ip:{self.client_address}"

    def require_api_key(self) -> None:
        """With public API keys configured, only a request carrying one of them goes on (else 401)."""
        keys = self.services.api_keys
        if not keys.enabled or self.request.method == "OPTIONS":
            return  # keys off (the quick start), or a preflight, which never carries credentials
        if not keys.matches(self.presented_key):
            logger.bind(request_id=self.request_id).warning(
                "missing or wrong API key from {}", self.client_address
            )
            raise Unauthorized(
                "a valid API key is required: send Authorization: Bearer <key> or X-API-Key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def limit(self, bucket: str) -> None:
        """Take a token from this client's bucket; 429 with Retry-After when it is empty."""
        limiter = self.services.limiter
        if not limiter.enabled or self.request.method == "OPTIONS":
            return  # a preflight does no work, and a refused one hides the 429 from the page
        decision = await limiter.take(self.client_id, bucket)
        # Kept to be sent again on an error answer, which starts from cleared headers.
        self._limit_headers = decision.headers()
        for name, value in self._limit_headers.items():
            self.set_header(name, value)
        if not decision.allowed:
            raise RateLimited("too many requests; slow down", headers=decision.headers())

    # -- input and output --------------------------------------------------------------------

    def query_fields(self) -> dict[str, str]:
        """Query arguments as single values; a repeated argument is ambiguous, so a 400."""
        fields: dict[str, str] = {}
        for name, values in self.request.query_arguments.items():
            if len(values) != 1:
                raise InvalidRequest(f"{name} is given more than once")
            try:
                fields[name] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"{name} is not valid UTF-8") from None
        return fields

    def json_fields(self) -> Mapping[str, Any]:
        content_type = self.request.headers.get("Content-Type", "application/json")
        if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
            raise InvalidRequest("the body must be application/json")
        try:
            body = json.loads(self.request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise InvalidRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the body must be a JSON object")
        return body

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (for the Allow header RFC 9110 requires on a 405)."""
        base = tornado.web.RequestHandler
        return [
            method
            for method in self.SUPPORTED_METHODS
            if getattr(type(self), method.lower()) is not getattr(base, method.lower())
        ]

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    def write_model(self, model: BaseModel, status: int = 200) -> None:
        """A response model as compact JSON in one pydantic-core call: the bytes of
        `write_json(dump(model))` without the intermediate dict (on the path of every /tts hit)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(model.__pydantic_serializer__.to_json(model))

    # -- answers sent again (server/handlers/answers.py) -------------------------------------

    def remember_answer(self, entries: Sequence[tuple[str, str]], entry_body: bytes | None = None) -> None:
        """The answer about to be finished may be sent again, as it is, to an identical request
        while L1 holds these very `(key, suffix)` entries (server/handlers/answers.py);
        `entry_body`: the body, when it is the last entry's own bytes (the memo keeps no copy)."""
        self._answer_entries, self._entry_body = tuple(entries), entry_body

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        memo: AnswerMemo | None = self.application.settings.get("answers")
        entries = getattr(self, "_answer_entries", None)
        if memo is None or entries is None or isinstance(chunk, dict):
            return super().finish(chunk)
        body = tornado.escape.utf8(chunk) if chunk is not None else self._entry_body
        done = super().finish(chunk)
        if self._status_code == 200 and body is not None:  # the headers are final now
            memo.remember(
                self.request,
                self.route,
                self._headers,
                body,
                entries,
                self.access_details(),
                body_is_entry=chunk is None,
            )
        return done

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error is JSON; unexpected ones are logged with their traceback and say nothing."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        for name, value in getattr(self, "_limit_headers", {}).items():
            self.set_header(name, value)
        if isinstance(exc, TTSError):
            code, message = exc.code, exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            code = {404: "not_found", 405: "method_not_allowed"}.get(status_code, "bad_request")
            if status_code == 405:
                self.set_header("Allow", ", ".join(self.allowed_methods()))
            message = exc.log_message if code == "bad_request" and exc.log_message else self._reason
        else:
            code, message = "internal_error", "internal server error"
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        error = exc if isinstance(exc, TTSError) else _framework_error(status_code, code, message)
        self.finish(json.dumps(dump(self.error_body(error)), ensure_ascii=False))

    def error_body(self, error: TTSError) -> BaseModel:
        """The native API's error shape; another front door (OpenAI's /v1) overrides this alone."""
        return native_error(error)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, TTSError):
            status_code = exc.status
            self._reason = tornado.httputil.responses.get(status_code, "Error")
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, TTSError) and value.status < 500:
            return  # a client mistake, already answered; the access line records it
        if isinstance(value, TTSError | tornado.web.HTTPError):
            logger.bind(request_id=self.request_id).warning(
                "{} {}: {}", self.request.method, self.request.path, value
            )
            return
        logger.bind(request_id=self.request_id).error(
            "unhandled error on {} {}:\n{}",
            self.request.method,
            self.request.path,
            "".join(traceback.format_exception(typ, value, tb)),
        )


class NotFoundHandler(BaseHandler):
    """Any path no route matches: a JSON 404 like every other error."""

    def prepare(self) -> None:
        super().prepare()
        raise NotFound("no such route")
