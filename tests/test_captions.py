"""Spec of captions from word timings: cues of a few words, in WebVTT and SubRip."""

from __future__ import annotations

from server.audio.captions import MAX_CUE_WORDS, cues, to_srt, to_vtt


def word(text: str, start: float, end: float) -> dict[str, object]:
    return {"word": text, "start_s": start, "end_s": end, "char_start": 0, "char_end": len(text)}


WORDS = [word("Hello", 0.1, 0.4), word("there.", 0.45, 0.9), word("How", 1.2, 1.4), word("are", 1.45, 1.6)]


def test_a_cue_ends_at_a_sentence_end():
    assert cues(WORDS) == [(0.1, 0.9, "Hello there."), (1.2, 1.6, "How are")]


def test_a_cue_holds_at_most_a_few_words():
    many = [word(f"w{i}", i * 0.2, i * 0.2 + 0.1) for i in range(10)]
    assert [len(text.split()) for _, _, text in cues(many)] == [MAX_CUE_WORDS, 3]


def test_a_cue_lasts_at_most_a_few_seconds():
    slow = [word("a", 0.0, 1.0), word("b", 2.0, 3.0), word("c", 3.2, 4.0)]
    assert cues(slow) == [(0.0, 3.0, "a b"), (3.2, 4.0, "c")]


def test_webvtt():
    assert to_vtt(WORDS) == (
        "WEBVTT\n\n00:00:00.100 --> 00:00:00.900\nHello there.\n\n00:00:01.200 --> 00:00:01.600\nHow are\n"
    )


def test_subrip():
    assert to_srt(WORDS) == (
        "1\n00:00:00,100 --> 00:00:00,900\nHello there.\n\n2\n00:00:01,200 --> 00:00:01,600\nHow are\n\n"
    )


def test_no_words_no_cues():
    assert to_vtt([]) == "WEBVTT\n"
    assert to_srt([]) == ""
