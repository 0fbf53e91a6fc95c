"""A slow reader paces only its own synthesis: others are served, and nothing piles up."""

from __future__ import annotations

import socket
import time

from tests.conftest import query, unique_text

SENTENCES = 60


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
    time.sleep(5)  # long enough for the kernel's socket buffers to fill
    after_buffers_filled = server.metric("tts_inferences_total")
    time.sleep(3)
    during_stall = server.metric("tts_inferences_total")
    other = server.get("/tts?" + query(text=unique_text("Meanwhile")), timeout=30)
    health = server.get("/healthz", timeout=5)

    sock.close()

    assert first.startswith(b"HTTP/1.1 200 OK")
    assert other.status == 200 and health.status == 200
    # Kernel socket buffers absorb some chunks (a few MB); then synthesis waits for the reader
    # instead of piling audio up in the server.
    assert during_stall == after_buffers_filled
    assert during_stall < SENTENCES
