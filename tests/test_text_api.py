"""Spec of `text_format` at the front doors: real server, real voice, real audio."""

from __future__ import annotations

import io
import time
import wave

import numpy as np
import pytest

from tests.conftest import ServerProcess, query, unique_text
from tests.test_api import assert_error

SAMPLE_RATE = 22050  # en_US-joe-medium
# The 4 ms fades on each side of a silence round their quietest samples to zero as well.
EDGE_ZEROS = int(0.010 * SAMPLE_RATE)


def wav_samples(server: ServerProcess, meta: dict) -> np.ndarray:
    body = server.get(meta["audio_path"]).body
    with wave.open(io.BytesIO(body)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def zero_runs(x: np.ndarray, shortest_s: float) -> list[int]:
    """Lengths (samples) of the runs of exact zeros: inserted silence (the voice never makes 0.05 s of it)."""
    silent = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(silent))
    runs = [int(b - a) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return [run for run in runs if run >= shortest_s * SAMPLE_RATE]


def test_markdown_is_spoken_and_keyed_apart_from_the_same_plain_text(server):
    text = f"# {unique_text('Heading')}\n\nSome **bold** words."
    markdown = server.post("/tts", {"text": text, "text_format": "markdown"}).json()
    plain = server.post("/tts", {"text": text, "text_format": "plain"}).json()
    assert markdown["cache"] == "miss"
    assert markdown["hash"] != plain["hash"]


def test_a_markdown_paragraph_end_adds_the_paragraph_silence(server):
    text = f"{unique_text('First paragraph')}\n\nSecond paragraph."
    meta = server.post("/tts", {"text": text, "text_format": "markdown"}).json()
    runs = zero_runs(wav_samples(server, meta), 0.05)
    assert len(runs) == 1
    assert 0 <= runs[0] - int(0.3 * SAMPLE_RATE) <= EDGE_ZEROS  # synthesis.paragraph_silence_s


def test_an_ssml_break_is_exactly_its_time_of_silence(server):
    text = f'<speak>{unique_text("Hello")} <break time="800ms"/> world.</speak>'
    meta = server.get("/tts?" + query(text=text, text_format="ssml")).json()
    runs = zero_runs(wav_samples(server, meta), 0.05)
    assert len(runs) == 1
    assert 0 <= runs[0] - int(0.8 * SAMPLE_RATE) <= EDGE_ZEROS


def test_the_same_text_in_another_format_is_another_entry_and_a_repeat_is_a_hit(server):
    text = f"<speak>{unique_text('Cached')}</speak>"
    first = server.post("/tts", {"text": text, "text_format": "ssml"}).json()
    again = server.post("/tts", {"text": text, "text_format": "ssml"}).json()
    assert (first["cache"], again["cache"], again["hash"]) == ("miss", "l1", first["hash"])


def test_an_unknown_text_format_is_400(server):
    resp = server.get("/tts?" + query(text="Hi.", text_format="html"))
    assert assert_error(resp, 400, "invalid_request") == "text_format must be one of plain, markdown or ssml"


def test_malformed_ssml_is_400_naming_line_and_column(server):
    resp = server.post("/tts", {"text": "<speak>Hello <b>world</speak>", "text_format": "ssml"})
    message = assert_error(resp, 400, "invalid_request")
    assert message == "SSML: not well-formed XML (mismatched tag) at line 1, column 24"


def test_billion_laughs_over_http_is_a_fast_400(server):
    entities = "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10 if i else "lol"}">' for i in range(10)
    )
    document = f"<!DOCTYPE speak [{entities}]><speak>&a9;</speak>"
    started = time.perf_counter()
    resp = server.post("/tts", {"text": document, "text_format": "ssml"})
    assert assert_error(resp, 400, "invalid_request") == "SSML: DTDs and entity declarations are not allowed"
    assert time.perf_counter() - started < 5


def test_an_external_entity_over_http_is_400(server):
    document = '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>'
    resp = server.post("/tts/stream", {"text": document, "text_format": "ssml"})
    assert assert_error(resp, 400, "invalid_request") == "SSML: DTDs and entity declarations are not allowed"


def test_deep_nesting_within_the_limits_is_400(server):
    document = "<speak>" + "<s>" * 40 + "deep" + "</s>" * 40 + "</speak>"
    resp = server.post("/tts", {"text": document, "text_format": "ssml"})
    assert assert_error(resp, 400, "invalid_request") == "SSML: elements nest deeper than 32 levels"


@pytest.mark.parametrize(
    "document",
    [
        "<speak>" + "<p>" * 10_000 + "deep" + "</p>" * 10_000 + "</speak>",
        f'<speak><foo data="{"a" * 1_000_000}">x</foo></speak>',
    ],
    ids=["10000-deep", "1MB-attribute"],
)
def test_huge_hostile_documents_are_413_before_parsing(server, document):
    resp = server.post("/tts", {"text": document, "text_format": "ssml"})
    assert_error(resp, 413, "body_too_large")


def test_phonemes_the_voice_does_not_know_are_400_naming_them(server):
    resp = server.get("/tts?" + query(text="Say [[ h ə 你 l ☃ ]] now."))
    message = assert_error(resp, 400, "invalid_request")
    assert message == "phonemes unknown to voice en_US-joe-medium: ☃ 你"


def test_inline_phonemes_are_spoken(server):
    meta = server.get("/tts?" + query(text=f"{unique_text('Say')} [[ h ə l ˈoʊ ]]")).json()
    assert meta["duration_s"] > 0.5


def test_an_ssml_voice_that_does_not_exist_is_400(server):
    resp = server.post(
        "/tts", {"text": '<speak><voice name="xx_XX-nobody">Hi.</voice></speak>', "text_format": "ssml"}
    )
    assert "xx_XX-nobody" in assert_error(resp, 400, "unknown_voice")


def test_ssml_with_nothing_to_speak_is_400(server):
    resp = server.post("/tts", {"text": '<speak><break time="1s"/></speak>', "text_format": "ssml"})
    assert assert_error(resp, 400, "invalid_request") == "text has nothing to speak"


def test_openai_speech_takes_text_format_as_an_extension(server):
    body = {
        "model": "tts-1",
        "voice": "alloy",
        "input": f"**{unique_text('Markdown')}**",
        "response_format": "wav",
        "text_format": "markdown",
    }
    resp = server.post("/v1/audio/speech", body)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "audio/wav"


def test_the_same_markdown_from_tts_and_v1_is_one_cache_entry(server):
    text = f"**{unique_text('Shared entry')}**"
    made = server.post("/tts", {"text": text, "text_format": "markdown"}).json()
    body = {
        "model": "tts-1",
        "voice": "alloy",
        "input": text,
        "response_format": "wav",
        "text_format": "markdown",
    }
    resp = server.post("/v1/audio/speech", body)
    assert resp.status == 200
    assert (resp.headers["X-Audio-Hash"], resp.headers["X-Cache"]) == (made["hash"], "l1")
