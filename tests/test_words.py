"""Spec of word timestamps on real synthesized audio: times, offsets, breaks, storage."""

from __future__ import annotations

import base64
import io
import itertools
import json
import wave
from collections.abc import Iterator

import numpy as np
import pytest

from server.synthesis.catalog import bundled_voice
from server.synthesis.voice import RuntimeOptions, Voice
from server.text.utterances import join_sentences
from server.timings import _phoneme_words, _said_alone
from tests.conftest import ServerProcess, query, unique_text

SAMPLE_RATE = 22050  # en_US-joe-medium
FRAME_S = 256 / SAMPLE_RATE  # the decoder's samples per frame
BREAK_TOLERANCE_S = 0.030


def timed(server: ServerProcess, **fields: object) -> tuple[dict, np.ndarray]:
    resp = server.post("/tts", {**fields, "timestamps": "word"})
    assert resp.status == 200, resp.body
    meta = resp.json()
    with wave.open(io.BytesIO(server.get(meta["audio_path"]).body)) as wav:
        return meta, np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")


def silences(x: np.ndarray, shortest_s: float) -> list[tuple[float, float]]:
    silent = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(silent))
    return [
        (a / SAMPLE_RATE, b / SAMPLE_RATE)
        for a, b in zip(edges[::2], edges[1::2], strict=True)
        if b - a >= shortest_s * SAMPLE_RATE
    ]


@pytest.fixture(scope="module")
def broken(server) -> tuple[str, dict, np.ndarray]:
    tag = unique_text("Hello").removesuffix(".")
    text = f'<speak>{tag} <break time="800ms"/> wonderful world.</speak>'
    meta, pcm = timed(server, text=text, text_format="ssml")
    return text, meta, pcm


def test_every_written_word_is_listed_with_its_offsets_in_the_text(broken):
    text, meta, _ = broken
    words = meta["words"]
    assert [text[w["char_start"] : w["char_end"]] for w in words] == [w["word"] for w in words]
    assert [w["word"] for w in meta["words"]][-2:] == ["wonderful", "world."]
    assert "<break" not in " ".join(w["word"] for w in meta["words"])


def test_a_break_falls_between_the_words_around_it(broken):
    _, meta, pcm = broken
    ((start, end),) = silences(pcm, 0.5)
    before = meta["words"][-3]  # the last word of the tag, before the break
    after = meta["words"][-2]
    assert before["end_s"] <= start + BREAK_TOLERANCE_S
    assert end <= after["start_s"] + BREAK_TOLERANCE_S
    assert after["start_s"] - before["end_s"] >= 0.8 - 1e-4  # times are rounded to 0.1 ms


def test_timings_are_in_order_and_inside_the_audio(broken):
    _, meta, pcm = broken
    times = [(w["start_s"], w["end_s"]) for w in meta["words"]]
    assert all(start <= end for start, end in times)
    assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(times))
    assert times[-1][1] <= len(pcm) / SAMPLE_RATE


SENTENCE_S, PARAGRAPH_S = 0.25, 0.5


@pytest.fixture(scope="module")
def paused(tmp_path_factory, redis_server) -> Iterator[ServerProcess]:
    """A server that adds silence after every sentence as well as after paragraphs."""
    env = {
        "TTS__REDIS__URL": redis_server.url,
        "TTS__SYNTHESIS__SENTENCE_SILENCE_S": str(SENTENCE_S),
        "TTS__SYNTHESIS__PARAGRAPH_SILENCE_S": str(PARAGRAPH_S),
    }
    proc = ServerProcess(tmp_path_factory.mktemp("paused"), env).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("speed", [1.0, 1.7])
def test_words_sentence_silences_and_breaks_account_for_the_audio_length(paused, speed):
    tag = unique_text("Then").removesuffix(".")
    text = (
        "<speak><p>Good morning, dear friends. How are you today?</p>"
        f'<p>Wait <break time="800ms"/> for it, <prosody rate="150%">{tag} go.</prosody></p></speak>'
    )
    meta, pcm = timed(paused, text=text, text_format="ssml", speed=speed)
    # After the first sentence its silence, after the first paragraph the paragraph's, the break
    # its own; a change of rate inside a sentence adds none, and the document's end none.
    added_s = SENTENCE_S + PARAGRAPH_S + 0.8
    words_s = sum(w["end_s"] - w["start_s"] for w in meta["words"])
    assert abs(words_s + added_s - len(pcm) / SAMPLE_RATE) <= FRAME_S
    assert meta["words"][0]["start_s"] == 0.0
    assert meta["words"][-1]["end_s"] == pytest.approx(len(pcm) / SAMPLE_RATE, abs=1e-4)


def test_speed_scales_the_times(server):
    text = unique_text("Speed test words")
    normal, _ = timed(server, text=text)
    fast, _ = timed(server, text=text, speed=2.0)
    assert fast["words"][-1]["end_s"] < 0.7 * normal["words"][-1]["end_s"]


def test_a_cache_hit_returns_the_stored_timings(server):
    text = unique_text("Stored timings")
    first, _ = timed(server, text=text)
    again, _ = timed(server, text=text)
    assert (again["cache"], again["words"]) == ("l1", first["words"])


def test_markdown_words_point_at_the_letters_not_the_markup(server):
    text = f"Some **bold** {unique_text('words')}"
    meta, _ = timed(server, text=text, text_format="markdown")
    assert [(w["word"], text[w["char_start"] : w["char_end"]]) for w in meta["words"]][:2] == [
        ("Some", "Some"),
        ("bold", "bold"),
    ]


def test_without_timestamps_there_is_no_words_field(server):
    meta = server.get("/tts?" + query(text=unique_text("No words"))).json()
    assert "words" not in meta


# -- captions ----------------------------------------------------------------------------------


def test_vtt_captions_come_from_the_stored_timings(server, broken):
    _, meta, _ = broken
    resp = server.get(f"/audio/{meta['hash']}.vtt")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/vtt; charset=utf-8"
    body = resp.body.decode("utf-8")
    assert body.startswith("WEBVTT\n\n00:00:00.")
    assert body.rstrip().endswith("wonderful world.")


def test_srt_captions_number_their_cues(server, broken):
    _, meta, _ = broken
    resp = server.get(f"/audio/{meta['hash']}.srt")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-subrip; charset=utf-8"
    assert resp.body.decode("utf-8").startswith("1\n00:00:00,")


def test_captions_of_unknown_audio_are_404(server):
    resp = server.get("/audio/" + "0" * 64 + ".vtt")
    assert resp.status == 404
    assert resp.json()["error"]["code"] == "not_found"


# -- server-sent events ------------------------------------------------------------------------


def events(server: ServerProcess, path: str, **kwargs) -> tuple[str, list[tuple[str, dict]]]:
    resp = server.get(path, **kwargs)
    assert resp.status == 200, resp.body
    parsed = []
    for block in resp.body.decode("utf-8").strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        parsed.append((name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return resp.headers["Content-Type"], parsed


def test_sse_sends_words_never_after_their_audio_and_ends_with_done(server):
    text = unique_text("Streaming words arrive early. Then more words follow")
    content_type, stream = events(server, "/tts/stream?" + query(text=text, events="sse"))
    assert content_type == "text/event-stream"
    assert stream[-1][0] == "done"
    sent_s = 0.0  # audio sent before each event, in seconds (PCM s16le)
    words = []
    for name, data in stream:
        if name == "words":
            # start_s is rounded to 0.1 ms; a sentence's first word starts right where it does.
            assert all(word["start_s"] >= sent_s - 1e-4 for word in data["words"])
            words.extend(data["words"])
        elif name == "audio":
            sent_s += len(base64.b64decode(data["audio"])) / 2 / SAMPLE_RATE
    assert [w["word"] for w in words] == text.split()
    assert stream[-1][1] == {"hash": stream[-1][1]["hash"], "words": len(words)}


def test_sse_of_cached_audio_sends_all_words_first(server):
    text = unique_text("Cached events")
    server.get("/tts?" + query(text=text))
    _, stream = events(server, "/tts/stream?" + query(text=text), headers={"Accept": "text/event-stream"})
    assert [name for name, _ in stream[:2]] == ["words", "audio"]
    assert [w["word"] for w in stream[0][1]["words"]] == text.split()


def test_sse_audio_joins_into_the_stored_audio(server):
    text = unique_text("Joined audio")
    _, stream = events(server, "/tts/stream?" + query(text=text, events="sse", format="wav"))
    streamed = b"".join(base64.b64decode(data["audio"]) for name, data in stream if name == "audio")
    meta = server.get("/tts?" + query(text=text)).json()
    stored = server.get(meta["audio_path"]).body
    assert streamed[44:] == stored[44:]


def test_openai_sse_adds_word_events_before_their_audio_when_asked(server):
    text = unique_text("OpenAI words")
    body = {
        "model": "tts-1",
        "voice": "alloy",
        "input": text,
        "response_format": "pcm",
        "stream_format": "sse",
        "timestamps": "word",
    }
    resp = server.post("/v1/audio/speech", body)
    assert resp.status == 200
    payloads = [
        json.loads(block.removeprefix("data: ")) for block in resp.body.decode().strip().split("\n\n")
    ]
    kinds = [p["type"] for p in payloads]
    assert kinds[0] == "speech.words"
    assert kinds[-1] == "speech.audio.done"
    words = [w for p in payloads if p["type"] == "speech.words" for w in p["words"]]
    assert [w["word"] for w in words] == text.split()


# Counting words as espeak says them (which written word each phoneme belongs to). espeak merges
# function words ("on the"), so most sentences count their words one by one; plain words are
# counted without asking espeak, and that count must be espeak's own.
SAID_ALONE = {
    "candy": 1,
    "Kitchen": 1,
    "NASA": 1,
    "don't": 1,
    "O'Neill": 1,
    "children.": 1,
    '"quoted,"': 1,
    "(aside)": 1,
    "iPhone": 2,  # camel case: two words
    "macOS": 2,
    "XIV": 2,  # a Roman numeral: "Roman fourteen"
    "1999": 3,
    "well-known": 1,
    "$5": 2,
    ".venv": 2,  # a leading dot is said
}


@pytest.fixture(scope="module")
def voice() -> Voice:
    return Voice.load(bundled_voice(), RuntimeOptions(provider="cpu", intra_op_threads=1, windowed=False))


@pytest.mark.parametrize(("word", "words"), SAID_ALONE.items())
def test_a_words_count_alone_is_espeaks_whether_or_not_espeak_is_asked(voice, word, words):
    asked = _phoneme_words(join_sentences(voice.phonemize(word)))
    assert _said_alone(voice, word) == asked == words
