"""Answers of L1 hits, kept whole and sent again before any request handler runs.

An L1 hit of `/tts` or `/audio` is answered from the same few inputs every time: the request
target, the Host and forwarding headers that make the audio URL, the Origin that picks the CORS
headers, and the L1 entries the audio came from. So its handler remembers the finished answer
under those inputs (`AnswerMemo`), with the generation of each L1 entry, and `AnswerFront` sends
it again to an identical request straight from the connection, while L1 still holds those very
entries. An entry evicted, deleted or replaced makes the answer stale: the request goes to its
handler as usual, which finds the audio wherever it is now.

This skips what half of an L1 hit cost: Tornado's request object, routing and handler cycle, and
the handler's parsing, validation, key derivation and JSON. The request still gets everything a
handler gives it: its own request id and Date, its access line and request metrics, its L1 hit
counted, and the shared tiers' expiry restarted (`TieredCache.keep_alive`).

An answer is only sent again where it needs no decision about the request: never with rate
limits on (every request takes a token from a bucket shared through Redis), with API keys only
for a request whose key matches, and never for HEAD, bodies, ranges or conditional requests.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import tornado.web
from cachetools import LRUCache
from tornado import httputil

from server.auth import KeyRing
from server.cache.keys import entry_name
from server.cache.memory import MemoryCache
from server.cache.tiers import L1
from server.errors import TTSError
from server.handlers.base import (
    REQUEST_ID_HEADER,
    check_header_sizes,
    log_answered,
    presented_key,
    request_id_of,
)
from server.services import Services

# Requests whose answer depends on more than the memo key: they always reach their handler.
_TO_HANDLER: Final = frozenset(
    {
        "Range",
        "If-Range",
        "If-None-Match",
        "If-Match",
        "If-Modified-Since",
        "If-Unmodified-Since",
        "Content-Length",
        "Transfer-Encoding",
        "Expect",
    }
)
# Headers each answer gets anew (or that Tornado's connection adds per request).
_PER_REQUEST: Final = frozenset({"Date", "X-Request-Id", "Connection", "Transfer-Encoding"})
_OK: Final = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")


@dataclass(frozen=True, slots=True)
class Entry:
    """An L1 entry an answer was made from, as it was then."""

    key: str
    suffix: str
    name: str
    generation: int


@dataclass(frozen=True, slots=True)
class Answer:
    route: str  # the metrics label of the handler that made it
    headers: tuple[tuple[str, str], ...]  # without the per-request ones
    body: bytes | None  # None: the last entry's bytes are the body (an /audio file)
    entries: tuple[Entry, ...]
    fields: dict[str, Any]  # the access line's cache, voice and text_chars
    size: int  # about what keeping it costs, in bytes (what the memo's bound counts)


def request_key(method: str, uri: str, headers: httputil.HTTPHeaders, peer: str) -> Hashable | None:
    """What an answer to this request depends on besides L1, or None when it must reach its handler.

    The forwarding headers count only from a trusted proxy, so with them the peer is part of it.
    """
    if method != "GET" or not _TO_HANDLER.isdisjoint(headers):
        return None
    get = headers.get
    forwarded = get("X-Forwarded-Host"), get("X-Forwarded-Proto")
    return uri, get("Host"), get("Origin"), *forwarded, peer if forwarded != (None, None) else None


# Beside its target, headers and body: the objects of an answer and of the memo's bookkeeping.
_ANSWER_OVERHEAD_BYTES: Final = 1024


class AnswerMemo:
    """The last answers of L1 hits, bounded by their size: the request target (a GET /tts holds
    the text), the headers and a /tts answer's JSON; an /audio answer's body is L1's own bytes,
    looked up when it is sent, and is not counted twice."""

    def __init__(self, memory: MemoryCache, max_bytes: int) -> None:
        self._memory = memory
        self._answers: LRUCache[Hashable, Answer] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda answer: answer.size
        )

    @classmethod
    def for_services(cls, services: Services | None) -> AnswerMemo | None:
        """A memo where answers may be sent again (L1 on, no rate limits), else None."""
        if services is None:
            return None
        settings = services.settings
        max_bytes = settings.cache.answers_max_bytes
        if settings.limits.enabled or not max_bytes or not settings.cache.l1_max_bytes:
            return None
        return cls(services.cache.memory, max_bytes)

    def __len__(self) -> int:
        return len(self._answers)

    def remember(
        self,
        request: httputil.HTTPServerRequest,
        route: str,
        headers: httputil.HTTPHeaders,
        body: bytes,
        entries: Sequence[tuple[str, str]],
        fields: dict[str, Any],
        *,
        body_is_entry: bool = False,
    ) -> None:
        """Keep a finished 200 made from these `(key, suffix)` L1 entries (none missing);
        `body_is_entry`: the body must be the last entry's very bytes, and is not copied."""
        key = request_key(request.method or "", request.uri or "", request.headers, request.remote_ip or "")
        if key is None:
            return
        held = []
        for audio_key, suffix in entries:
            name = entry_name(audio_key, suffix)
            generation = self._memory.generation(name)
            if generation is None:
                return  # made from a shared tier: not an L1 answer
            held.append(Entry(audio_key, suffix, name, generation))
        if body_is_entry and self._memory.current(held[-1].name, held[-1].generation) is not body:
            return  # made from the entry (a PCM body parsed from its WAV): the memo would copy it
        kept = tuple((name, value) for name, value in headers.get_all() if name not in _PER_REQUEST)
        body_kept = None if body_is_entry else body
        size = _ANSWER_OVERHEAD_BYTES + len(request.uri or "") + len(body_kept or b"")
        size += sum(len(name) + len(value) for name, value in kept)
        with contextlib.suppress(ValueError):  # larger than the whole memo
            self._answers[key] = Answer(route, kept, body_kept, tuple(held), fields, size)

    def find(self, key: Hashable) -> tuple[Answer, list[bytes]] | None:
        """The answer under `key` with its entries' bytes, while L1 holds each as it was."""
        answer = self._answers.get(key)
        if answer is None:
            return None
        held = []
        for entry in answer.entries:
            data = self._memory.current(entry.name, entry.generation)
            if data is None:
                del self._answers[key]
                return None
            held.append(data)
        return answer, held


class AnswerFront(httputil.HTTPServerConnectionDelegate):
    """In front of the Tornado application: a remembered answer if there is one, else the app."""

    def __init__(self, app: tornado.web.Application, memo: AnswerMemo, services: Services) -> None:
        self.app = app
        self.memo = memo
        self.services = services
        self._keys: KeyRing = services.api_keys
        self._max_header_bytes = services.settings.server.max_header_bytes
        self._hits = services.metrics.cache_hits.labels(L1)
        self._again = services.metrics.answers_again
        self._date = (0, "")

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Exchange(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def find(
        self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders, peer: str
    ) -> tuple[Answer, list[bytes]] | None:
        key = request_key(start_line.method, start_line.path, headers, peer)
        if key is None:
            return None
        found = self.memo.find(key)
        if found is None:
            return None
        # What the handler would refuse goes to it, to be refused there.
        try:
            check_header_sizes(start_line.path, headers, self._max_header_bytes)
        except TTSError:
            return None
        if self._keys.enabled and not self._keys.matches(presented_key(headers)):
            return None
        return found

    def send(
        self,
        request_conn: httputil.HTTPConnection,
        start_line: httputil.RequestStartLine,
        request_headers: httputil.HTTPHeaders,
        answer: Answer,
        held: list[bytes],
    ) -> None:
        started = time.perf_counter()
        request_id = request_id_of(request_headers)
        headers = httputil.HTTPHeaders()
        headers[REQUEST_ID_HEADER] = request_id
        for name, value in answer.headers:
            headers.add(name, value)
        headers["Date"] = self._http_date()
        request_conn.write_headers(_OK, headers, held[-1] if answer.body is None else answer.body)
        request_conn.finish()
        # What the handler's path would have done besides answering.
        cache = self.services.cache
        for entry, data in zip(answer.entries, held, strict=True):
            cache.keep_alive(entry.key, data, entry.suffix)
        self._hits.inc()
        self._again.inc()
        client = request_conn.context.remote_ip  # type: ignore[attr-defined]
        request = (request_id, "GET", start_line.path.partition("?")[0], client)
        log_answered(self.services, answer.route, request, 200, time.perf_counter() - started, answer.fields)
        lifecycle = self.services.lifecycle
        if not lifecycle.in_flight:
            lifecycle.trim.idle()

    def _http_date(self) -> str:
        """The Date header, made once a second."""
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, httputil.format_timestamp(second))
        return self._date[1]


class _Exchange(httputil.HTTPMessageDelegate):
    """One request: answered by the front, or handed to the application as it arrived."""

    def __init__(
        self, front: AnswerFront, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> None:
        self.front = front
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None
        self.found: tuple[Answer, list[bytes]] | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        assert isinstance(start_line, httputil.RequestStartLine)
        peer = self.request_conn.context.remote_ip  # type: ignore[attr-defined]
        self.found = self.front.find(start_line, headers, peer)
        if self.found is not None:
            self.start_line, self.headers = start_line, headers
            return None
        self.inner = self.front.app.start_request(self.server_conn, self.request_conn)
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        # A remembered answer is only found for a request without a body.
        return None if self.inner is None else self.inner.data_received(chunk)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
        elif self.found is not None:
            self.front.send(self.request_conn, self.start_line, self.headers, *self.found)

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()
