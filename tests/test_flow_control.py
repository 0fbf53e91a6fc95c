"""A slow reader paces only its own synthesis: others are served, and nothing piles up."""

from __future__ import annotations

import socket
import time

from tests.conftest import query, unique_text

SENTENCES = 60
STILL_FOR_S = 3  # far longer than one window's inference (~0.1 s): no progress means paused
STALL_WAIT_S = 60
AUDIO_METRIC = "tts_synthesized_audio_seconds_total"  # seconds of audio made, counted per window


def test_a_stalled_reader_pauses_its_synthesis_and_blocks_no_one(make_server):
    server = make_server()
    text = (
        unique_text("Stalled")
        + " "
        + " ".join(
            f"Sentence {n} goes on for a little while, so that the stream is long." for n in range(SENTENCES)
        )
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a reader that takes almost nothing
    sock.settimeout(120)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /tts/stream?{query(text=text)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    first = sock.recv(4096)
    # Kernel socket buffers absorb some chunks (a few MB); then synthesis must wait for the reader.
    # How long the buffers take to fill depends on how busy the machine is, so wait until the
    # count of synthesized chunks stops moving (or time runs out, which fails below).
    stalled = None
    deadline = time.monotonic() + STALL_WAIT_S
    previous = server.metric(AUDIO_METRIC)
    while time.monotonic() < deadline:
        time.sleep(STILL_FOR_S)
        current = server.metric(AUDIO_METRIC)
        if current == previous:
            stalled = current
            break
        previous = current
    other = server.get("/tts?" + query(text=unique_text("Meanwhile")), timeout=30)
    health = server.get("/healthz", timeout=5)

    sock.close()

    assert first.startswith(b"HTTP/1.1 200 OK")
    assert other.status == 200 and health.status == 200
    assert stalled is not None, f"synthesis never paused in {STALL_WAIT_S} s"
    # Each sentence is over 3 s of audio: pausing before 2 s a sentence is pausing well before the end.
    assert stalled < SENTENCES * 2.0, f"{stalled:.0f} s of audio made for a reader that took almost none"
