"""`/tts/stream` against a real server: framing, equality with the stored WAV, joins, cancellation.

The body is read with a raw socket and the chunked framing is parsed here, so each HTTP chunk is
exactly one flush of the server: for a fresh synthesis, one synthesized chunk.
"""

from __future__ import annotations

import io
import re
import socket
import struct
import time
import wave
from dataclasses import dataclass

import numpy as np
import pytest

from tests.conftest import ServerProcess, query, unique_text

SAMPLE_RATE = 22050  # en_US-joe-medium
FULL_SCALE = 32767
SENTENCE_SILENCE_S = 0.2  # the SSML break the loudness test puts between its sentences


@dataclass
class Streamed:
    status: int
    headers: dict[str, str]  # names lower-cased
    chunks: list[bytes]  # one entry per HTTP chunk, as the server flushed them

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def read_stream(server: ServerProcess, path: str, *, max_chunks: int | None = None) -> Streamed:
    """GET `path` over a raw socket; stop (and close) after `max_chunks` chunks when given."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode("latin-1").split(":", 1)
            headers[name.strip().lower()] = value.strip()
        assert headers.get("transfer-encoding") == "chunked", (status, headers)
        chunks: list[bytes] = []
        while max_chunks is None or len(chunks) < max_chunks:
            size = int(reader.readline().split(b";")[0], 16)
            data = reader.read(size)
            reader.readline()
            if size == 0:
                break
            chunks.append(data)
        reader.close()
        return Streamed(status, headers, chunks)
    finally:
        sock.close()


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int32)


def stored_pcm(server: ServerProcess, text: str) -> tuple[dict, bytes]:
    """The /tts answer for `text` and the PCM frames of the WAV its URL serves."""
    meta = server.get("/tts?" + query(text=text)).json()
    resp = server.get(meta["audio_url"].removeprefix(server.base))
    assert resp.status == 200
    with wave.open(io.BytesIO(resp.body)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, SAMPLE_RATE)
        return meta, wav.readframes(wav.getnframes())


def sentence_spans(x: np.ndarray) -> list[tuple[int, int]]:
    """Split at the exact-zero silence inserted between sentences (the model never emits 0.15 s of it)."""
    silent = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(silent))
    min_run = int(0.75 * SENTENCE_SILENCE_S * SAMPLE_RATE)
    gaps = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_run]
    bounds = [0, *(v for gap in gaps for v in gap), len(x)]
    return list(zip(bounds[::2], bounds[1::2], strict=True))


def sentences(count: int) -> str:
    tag = unique_text("Story")
    return " ".join(f"Sentence {i} of this story goes on a little." for i in range(count)) + " " + tag


# -- format and headers -----------------------------------------------------------------------------


def test_stream_defaults_to_pcm_with_audio_headers(server):
    streamed = read_stream(server, "/tts/stream?" + query(text=unique_text("Headers")))
    assert streamed.status == 200
    h = streamed.headers
    assert h["content-type"] == "audio/pcm"
    assert h["x-audio-sample-rate"] == str(SAMPLE_RATE)
    assert h["x-audio-channels"] == "1"
    assert h["x-audio-format"] == "s16le"
    assert h["x-cache"] == "miss"
    assert re.fullmatch(r"[0-9a-f]{64}", h["x-audio-hash"])
    assert re.fullmatch(r"[0-9a-f]{32}", h["x-request-id"])
    assert len(streamed.body) > 0
    assert len(streamed.body) % 2 == 0


def test_stream_pcm_equals_the_stored_wav_and_is_cached_after(server):
    text = unique_text("The stream and the file. They hold the same samples")
    streamed = read_stream(server, "/tts/stream?" + query(text=text))
    assert streamed.headers["x-cache"] == "miss"
    meta, pcm = stored_pcm(server, text)
    assert meta["cache"] == "l1"
    assert meta["hash"] == streamed.headers["x-audio-hash"]
    assert pcm == streamed.body


def test_wav_stream_is_a_streaming_header_then_the_same_pcm(server):
    text = unique_text("A streamed WAV file")
    streamed = read_stream(server, "/tts/stream?" + query(text=text, format="wav"))
    assert streamed.status == 200
    assert streamed.headers["content-type"] == "audio/wav"
    header, pcm = streamed.body[:44], streamed.body[44:]
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", header)
    # RIFF and data sizes are "unknown" (0xFFFFFFFF) because the length is not known up front.
    assert fields == (
        b"RIFF",
        0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        SAMPLE_RATE,
        SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        0xFFFFFFFF,
    )
    _, stored = stored_pcm(server, text)
    assert pcm == stored


def test_stream_of_cached_text_is_served_without_synthesis(server):
    text = unique_text("Cached before it is streamed")
    _, stored = stored_pcm(server, text)
    inferences = server.metric("tts_inferences_total")
    streamed = read_stream(server, "/tts/stream?" + query(text=text))
    assert streamed.headers["x-cache"] == "l1"
    assert streamed.body == stored
    assert server.metric("tts_inferences_total") == inferences


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"text": "hello", "format": "ogg"}, "invalid_request"),
        ({"text": "..."}, "invalid_request"),
        ({"text": "hello", "voice": "nobody"}, "unknown_voice"),
        ({}, "invalid_request"),
    ],
)
def test_stream_rejects_bad_requests_with_json_before_any_audio(server, fields, code):
    resp = server.get("/tts/stream?" + query(**fields))
    assert resp.status == 400
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert resp.json()["error"]["code"] == code


# -- what the audio sounds like -------------------------------------------------------------------


def test_first_chunk_is_a_small_window_not_the_whole_first_sentence(server):
    text = (
        "When the long winter finally ended, the villagers gathered by the river, "
        "sharing bread and stories " + unique_text("until night")
    )
    streamed = read_stream(server, "/tts/stream?" + query(text=text))
    assert streamed.headers["x-cache"] == "miss"
    first, whole = len(streamed.chunks[0]) // 2, len(streamed.body) // 2
    assert len(streamed.chunks) >= 2
    assert first < whole / 3


def test_chunks_join_without_a_jump(server):
    streamed = read_stream(server, "/tts/stream?" + query(text=sentences(5)))
    assert streamed.headers["x-cache"] == "miss"
    x = samples(streamed.body)
    steps = np.abs(np.diff(x))
    # Between sentences faded edges and inserted silence meet at (nearly) zero; between windows of
    # one sentence the waveform simply goes on. Either way the step across a join is of the size
    # of the signal's own steps around it (a join on the steepest slope of a wave may be a little
    # larger than its neighbours: the 6 ms either side hold a few periods of the voice), where a
    # click would be a step of thousands.
    typical = float(np.median(steps[steps > 0]))
    joins = np.cumsum([len(c) // 2 for c in streamed.chunks])[:-1]
    assert len(joins) >= 5
    for join in joins:
        across = steps[join - 1]  # from the last sample of one chunk to the first of the next
        nearby = np.concatenate([steps[join - 129 : join - 1], steps[join : join + 128]])
        bound = 1.5 * max(typical, float(nearby.max()))
        assert across <= bound, (join, x[join - 3 : join + 3].tolist(), typical)


def test_loudness_is_steady_across_sentences_and_never_full_scale(server):
    pause = f'<break time="{int(SENTENCE_SILENCE_S * 1000)}ms"/>'
    sentences = [
        "The meeting will start at nine in the morning.",
        "Hmm.",
        "Please bring your notes and the printed report.",
        "Okay.",
        "We will finish before lunch " + unique_text("today"),
    ]
    text = f"<speak>{pause.join(sentences)}</speak>"
    streamed = read_stream(server, "/tts/stream?" + query(text=text, text_format="ssml"))
    x = samples(streamed.body)
    spans = sentence_spans(x)
    assert len(spans) == 5
    rms = [float(np.sqrt(np.mean(x[a:b].astype(np.float64) ** 2))) for a, b in spans]
    peaks = [int(np.abs(x[a:b]).max()) for a, b in spans]
    # One fixed gain keeps speech within a few dB from sentence to sentence; per-sentence peak
    # normalization would lift each one (the short "Hmm." most) to full scale.
    assert max(rms) / min(rms) < 3, rms
    assert max(peaks) < FULL_SCALE * 0.99, peaks


# -- the client goes away -------------------------------------------------------------------------


def test_client_disconnect_stops_synthesis_and_frees_its_slot(make_server):
    # A dedicated server: its counters see only this test, and with one admission slot a
    # synthesis left running (or parked forever) would turn the next request into a 503.
    server = make_server({"TTS__SYNTHESIS__MAX_ACTIVE_REQUESTS": "1"})
    count = 40
    before = server.metric("tts_inferences_total")
    streamed = read_stream(server, "/tts/stream?" + query(text=sentences(count)), max_chunks=1)
    assert streamed.status == 200
    assert len(streamed.chunks) == 1

    deadline = time.monotonic() + 30
    settled = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        ran = server.metric("tts_inferences_total") - before
        if ran == settled and server.metric("tts_active_streams") == 0:
            break
        settled = ran
    assert settled is not None
    assert settled < count / 4, f"{settled} of {count} chunks synthesized after the client left"
    assert server.metric("tts_active_streams") == 0
    assert server.get("/tts?" + query(text=unique_text("Next"))).status == 200
