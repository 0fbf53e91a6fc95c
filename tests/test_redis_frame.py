"""Spec of the Redis value framing: only an intact frame this server wrote is ever served."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.cache.redis import HEADER, MAGIC, frame, unframe

WAV_LIKE = b"RIFF" + bytes(range(256)) * 4


def test_frame_round_trips():
    assert unframe(frame(WAV_LIKE)) == WAV_LIKE


def test_empty_payload_round_trips():
    assert unframe(frame(b"")) == b""


def test_frame_is_magic_length_crc_then_payload():
    framed = frame(b"abc")
    assert framed[:4] == MAGIC
    assert len(framed) == HEADER.size + 3
    assert framed[HEADER.size :] == b"abc"


@given(st.binary(max_size=4096))
def test_any_payload_round_trips(payload):
    assert unframe(frame(payload)) == payload


@pytest.mark.parametrize("keep", [0, 1, HEADER.size - 1, HEADER.size, HEADER.size + 1])
def test_truncated_frame_is_rejected_at_any_length(keep):
    assert unframe(frame(WAV_LIKE)[:keep]) is None


def test_frame_missing_its_last_byte_is_rejected():
    assert unframe(frame(WAV_LIKE)[:-1]) is None


def test_frame_with_extra_bytes_is_rejected():
    assert unframe(frame(WAV_LIKE) + b"\0") is None


@given(st.data())
def test_any_single_bit_flip_is_rejected(data):
    framed = frame(WAV_LIKE)
    bit = data.draw(st.integers(0, len(framed) * 8 - 1))
    damaged = bytearray(framed)
    damaged[bit // 8] ^= 1 << (bit % 8)
    assert unframe(bytes(damaged)) is None


@pytest.mark.parametrize(
    "foreign",
    [
        pickle.dumps({"audio": WAV_LIKE}),
        WAV_LIKE,
        b"OK",
        b"",
        "\u00e9t\u00e9".encode() * 10,
    ],
    ids=["pickle", "bare-wav", "short", "empty", "utf8"],
)
def test_foreign_value_is_rejected(foreign):
    assert unframe(foreign) is None
