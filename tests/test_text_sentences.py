"""Spec of sentence segmentation, pauses and inline phonemes in plain text."""

from __future__ import annotations

import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.text.clean import normalize_text
from server.text.phonemes import split_inline
from server.text.plan import FrontEnd, plan_text, segment_language
from server.text.sentences import Pauses, sentence_spans
from server.text.spans import Piece, TextFormat
from server.text.utterances import join_sentences

FRONT = FrontEnd(Pauses(sentence_s=0.1, paragraph_s=0.3), normalize=False)


def sentences(text: str, language: str = "en-us") -> list[str]:
    return [segment.text for segment in plan_text(text, TextFormat.PLAIN, language, FRONT).segments]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith is here. He is early.", ["Dr. Smith is here.", "He is early."]),
        ("Mr. and Mrs. Jones came.", ["Mr. and Mrs. Jones came."]),
        ("J. R. R. Tolkien wrote it. Then he slept.", ["J. R. R. Tolkien wrote it.", "Then he slept."]),
        ("Pi is 3.14 or so. Yes.", ["Pi is 3.14 or so.", "Yes."]),
        ("Bring fruit, e.g. apples. Thanks.", ["Bring fruit, e.g. apples.", "Thanks."]),
        ("Wait... what? Really!", ["Wait... what?", "Really!"]),
        ("It starts at 5 p.m. sharp.", ["It starts at 5 p.m. sharp."]),
        ("No end punctuation", ["No end punctuation"]),
    ],
    ids=repr,
)
def test_sentences_end_where_a_reader_would_end_them(text, expected):
    assert sentences(text) == expected


def test_a_language_pysbd_lacks_splits_at_end_punctuation():
    assert sentences("Eka lause. Toinen lause!", "fi") == ["Eka lause.", "Toinen lause!"]


def test_espeak_languages_map_to_the_segmenter_language():
    assert [segment_language(v) for v in ("en-us", "en-gb-x-rp", "de", "pt-br", "cmn")] == [
        "en",
        "en",
        "de",
        "pt",
        "cmn",
    ]


def test_sentence_spans_cover_the_text_without_gaps():
    text = "One. Two!  Three?"
    assert sentence_spans(text, "en") == [(0, 5), (5, 11), (11, 17)]


def test_threads_segmenting_at_once_each_get_their_own_sentences():
    """Requests are planned on the IOLoop while a job's document is split in its own thread."""
    texts = [("First one here. Second one there. " * (n % 5 + 1)) + f"End {n}." for n in range(40)]
    expected = {text: sentence_spans(text, "en") for text in texts}
    wrong: list[str] = []

    def segment_all(offset: int) -> None:
        for _ in range(10):
            wrong.extend(text for text in texts[offset::2] if sentence_spans(text, "en") != expected[text])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so a shared segmenter shows
    try:
        threads = [threading.Thread(target=segment_all, args=(offset,)) for offset in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not wrong


def test_plain_text_gets_the_sentence_pause_and_nothing_after_the_last_is_its_paragraphs():
    plan = plan_text("One here. Two here.", TextFormat.PLAIN, "en-us", FRONT)
    assert [(s.text, s.pause_s) for s in plan.segments] == [("One here.", 0.1), ("Two here.", 0.3)]


def test_runs_point_at_their_sentence_in_the_source():
    text = "First one. Second one."
    plan = plan_text(text, TextFormat.PLAIN, "en-us", FRONT)
    assert [text[r.start : r.end] for s in plan.segments for r in s.runs] == ["First one. ", "Second one."]


def test_inline_phonemes_are_split_out_with_their_offsets():
    piece = Piece("Say [[ h ə l ˈoʊ ]] twice.", 10, 36)
    parts = split_inline(piece)
    assert [(p.text, p.phonemes, p.start, p.end) for p in parts] == [
        ("Say ", (), 10, 14),
        ("", ("h", "ə", "l", "ˈ", "o", "ʊ"), 14, 29),
        (" twice.", (), 29, 36),
    ]


def test_inline_phonemes_never_end_a_sentence():
    plan = plan_text("Read [[ ɹ ˈɛ d . ]] aloud. Done.", TextFormat.PLAIN, "en-us", FRONT)
    assert [s.text for s in plan.segments] == ["Read ɹˈɛd. aloud.", "Done."]


def test_empty_inline_phonemes_say_nothing():
    plan = plan_text("Hi [[ ]] there.", TextFormat.PLAIN, "en-us", FRONT)
    assert [s.text for s in plan.segments] == ["Hi there."]


def test_espeak_pieces_of_one_sentence_join_without_their_inner_periods():
    # espeak ends a sentence at "Dr."; the segmenter said it does not, so the period goes.
    assert join_sentences([list("dˈɑːktɚ."), list("smˈɪθ ɪz hˈɪɹ.")]) == list("dˈɑːktɚ smˈɪθ ɪz hˈɪɹ.")


def test_espeak_pieces_keep_question_and_exclamation_marks():
    assert join_sentences([list("wˈʌt?"), list("jˈɛs!")]) == list("wˈʌt? jˈɛs!")


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=120))
def test_plain_text_loses_no_characters_and_keeps_offsets_inside_the_text(raw):
    text = normalize_text(raw)  # what the request parser hands the front-end
    plan = plan_text(text, TextFormat.PLAIN, "en-us", FRONT)
    words = [w for s in plan.segments for r in s.runs if not r.phonemes for w in r.text.split()]
    assert all(0 <= r.start <= r.end <= len(text) for s in plan.segments for r in s.runs)
    if "[[" not in text:
        assert "".join(words) == "".join(text.split())
