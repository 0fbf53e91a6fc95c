"""`/tts/stream`: audio in any format, sent as each chunk is synthesized (and encoded)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any, Final

from tornado.iostream import StreamClosedError

from server.audio.formats import FORMATS, PCM, Rendition
from server.audio.pcm import CHANNELS
from server.errors import RateLimited, TTSError
from server.handlers.audio import audio_content
from server.handlers.tts import SPEECH_ERRORS, SpeechHandler
from server.openapi import RATE_LIMIT_HEADERS, Header, Reply, integer_header, operation
from server.renditions import EncodedStream
from server.schemas import StreamFields, validate

STREAM_HEADERS: Final = {
    "X-Audio-Sample-Rate": integer_header("Samples per second", True),
    "X-Audio-Channels": integer_header("Always 1 (mono)", True),
    "X-Audio-Format": Header("Sample format of audio/pcm", schema={"type": "string", "enum": ["s16le"]}),
    "X-Audio-Hash": Header("The audio's hash (its /audio URL once stored)", True),
    "X-Cache": Header(
        "Tier that had it, or miss", True, {"type": "string", "enum": ["l1", "l2", "disk", "s3", "miss"]}
    ),
    **RATE_LIMIT_HEADERS,
}
EVENT_STREAM: Final = "text/event-stream"
STREAMED: Final = {
    200: Reply(
        "The audio, streamed; with events=sse, server-sent events (audio, words, done)",
        {
            **audio_content(),
            EVENT_STREAM: {
                "type": "object",
                "description": "One event; its data is JSON: audio {audio: base64}, words {words: "
                "[{word, start_s, end_s, char_start, char_end}]}, done {hash, words}",
                "properties": {
                    "event": {"type": "string", "enum": ["audio", "words", "done"]},
                    "data": {"type": "string", "description": "JSON"},
                },
                "required": ["event", "data"],
            },
        },
        STREAM_HEADERS,
    )
}
STREAM_DESCRIPTION: Final = (
    "audio/pcm is raw s16le mono; audio/wav has a header with unknown length; the compressed "
    "formats are encoded as the audio arrives. An error after the first audio can only close the "
    "connection early."
)


class StreamingHandler(SpeechHandler):
    """Sends an encoded speech stream chunk by chunk; the routes that stream speech build on it.

    Subclasses may frame each chunk (`frame`) and end the body (`trailer`), as OpenAI's SSE does.
    """

    default_format_key = "stream_format"

    def frame(self, chunk: bytes) -> bytes:
        return chunk

    def trailer(self, stream: EncodedStream) -> bytes:
        return b""

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """At most `limits.streams_per_client` concurrent streams per client (in this worker)."""
        limits = self.services.settings.limits
        open_streams = self.services.streams_by_client
        client = self.client_id
        if limits.enabled and open_streams[client] >= limits.streams_per_client:
            raise RateLimited("too many concurrent streams for this client", retry_after_s=1)
        open_streams[client] += 1
        try:
            yield
        finally:
            open_streams[client] -= 1
            if open_streams[client] <= 0:
                del open_streams[client]

    async def send_stream(self, stream: EncodedStream) -> None:
        self._stream = stream
        self.cache_tier = stream.tier
        metrics = self.services.metrics
        metrics.active_streams.inc()
        try:
            chunks = stream.chunks()
            # Errors before the first audio (nothing to speak, synthesis failure) still get a
            # proper JSON status; after it, the only signal left is closing the connection.
            first = await anext(chunks, b"")
            self.write_stream_headers(stream)
            self.write(self.frame(first) if first else b"")
            await self.flush()
            async for chunk in chunks:
                if chunk:
                    self.write(self.frame(chunk))
                    await self.flush()  # flow control: a slow reader paces us, memory stays bounded
            self.finish(self.trailer(stream))
        except StreamClosedError:
            pass  # the client went away; close() below stops the synthesis
        except TTSError:
            if not self._headers_written:
                raise
            # Audio was already sent: a status can no longer change, so end the response short.
            self.request.connection.close()
        finally:
            stream.close()
            metrics.active_streams.dec()

    def on_connection_close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()  # stop synthesizing now, not when the next chunk fails to send
        super().on_connection_close()

    def write_stream_headers(self, stream: EncodedStream) -> None:
        audio_format = stream.rendition.format
        self.set_header("Content-Type", audio_format.content_type)
        if audio_format is PCM:
            self.set_header("X-Audio-Format", "s16le")
        self.set_header("X-Audio-Sample-Rate", str(stream.sample_rate))
        self.set_header("X-Audio-Channels", str(CHANNELS))
        self.set_header("X-Audio-Hash", stream.key)
        self.set_header("X-Cache", stream.tier)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # nginx would otherwise buffer the stream


class StreamHandler(StreamingHandler):
    route = "/tts/stream"

    @operation(
        operation_id="ttsStream",
        query=StreamFields,
        replies=STREAMED,
        errors=SPEECH_ERRORS,
        description=STREAM_DESCRIPTION,
    )
    async def get(self) -> None:
        """Audio sent chunk by chunk as it is synthesized (and encoded)."""
        await self._stream_fields(validate(StreamFields, self.query_fields()))

    @operation(
        operation_id="ttsStreamPost",
        body=StreamFields,
        replies=STREAMED,
        errors=SPEECH_ERRORS,
        description=STREAM_DESCRIPTION,
    )
    async def post(self) -> None:
        """As GET, with the fields in a JSON body (for texts too long for a URL)."""
        await self._stream_fields(validate(StreamFields, self.json_fields()))

    async def _stream_fields(self, fields: StreamFields) -> None:
        rendition = Rendition(FORMATS[fields.format])
        request = self.speech_request(fields)
        accept = self.request.headers.get("Accept", "")
        self._sse = fields.events == "sse" or EVENT_STREAM in accept
        self._words_sent = 0
        with self.stream_slot():
            stream = await self.services.renditions.stream(request, rendition, self.client_id)
            if self._sse:
                await stream.load_words()
            await self.send_stream(stream)

    # Server-sent events: `words` (the timings known so far, never after their audio), `audio`
    # (base64 of the asked format), and a final `done`.

    def frame(self, chunk: bytes) -> bytes:
        if not getattr(self, "_sse", False):
            return chunk
        return self._new_words() + sse_event("audio", {"audio": base64.b64encode(chunk).decode("ascii")})

    def trailer(self, stream: EncodedStream) -> bytes:
        if not getattr(self, "_sse", False):
            return b""
        return self._new_words() + sse_event("done", {"hash": stream.key, "words": self._words_sent})

    def _new_words(self) -> bytes:
        words = self._stream.words()
        if len(words) <= self._words_sent:
            return b""
        fresh = words[self._words_sent :]
        self._words_sent = len(words)
        return sse_event("words", {"words": fresh})

    def write_stream_headers(self, stream: EncodedStream) -> None:
        super().write_stream_headers(stream)
        if getattr(self, "_sse", False):
            self.set_header("Content-Type", EVENT_STREAM)


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {data}\n\n".encode()
