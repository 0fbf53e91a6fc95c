"""Spec of written words: their offsets in the source, and how phoneme words map onto them."""

from __future__ import annotations

import pytest

from server.text.normalize import normalize_english
from server.text.plan import FrontEnd, plan_text
from server.text.spans import TextFormat
from server.text.words import assign


def written(document: str, text_format: TextFormat) -> list[tuple[str, str, int]]:
    plan = plan_text(document, text_format, "en-us", FrontEnd())
    return [
        (word.text, document[word.start : word.end], word.spoken)
        for segment in plan.segments
        for run in segment.runs
        for word in run.words
    ]


def test_plain_words_are_tokens_with_their_spoken_length():
    assert written("It costs $3.50 today.", TextFormat.PLAIN) == [
        ("It", "It", 1),
        ("costs", "costs", 1),
        ("$3.50", "$3.50", 5),
        ("today.", "today.", 1),
    ]


def test_markdown_words_are_the_letters_without_the_markup():
    assert written("**Bold** and [a link](https://x.y).", TextFormat.MARKDOWN) == [
        ("Bold", "Bold", 1),
        ("and", "and", 1),
        ("a", "a", 1),
        ("link", "link", 1),  # "link." is not written together: its letters are the word
    ]


def test_an_ssml_substitution_is_one_word_spanning_what_it_replaces():
    document = '<speak>The <sub alias="World Wide Web">WWW</sub> grew.</speak>'
    assert written(document, TextFormat.SSML) == [("The", "The", 1), ("WWW", "WWW", 3), ("grew.", "grew.", 1)]


def test_inline_phonemes_are_one_word():
    assert written("Say [[ h ə ]] now.", TextFormat.PLAIN)[1] == ("[[ h ə ]]", "[[ h ə ]]", 1)


@pytest.mark.parametrize(
    ("spoken", "phoneme_words", "owners"),
    [
        ([1, 1, 1], 3, [0, 1, 2]),  # counts agree: one to one
        ([1, 1, 5], 7, [0, 1, 2, 2, 2, 2, 2]),  # "$3.50" said as five words
        ([1, 1, 1, 1], 8, [0, 0, 1, 1, 2, 2, 3, 3]),  # in proportion
        ([1, 1, 1], 2, [0, 2]),  # espeak merged two: the middle word gets none
        ([], 3, []),
        ([1], 0, []),
    ],
)
def test_phoneme_words_are_shared_out_in_order(spoken, phoneme_words, owners):
    assert assign(spoken, phoneme_words) == owners


def test_normalization_of_a_single_token_is_what_the_spoken_length_counts():
    assert normalize_english("$3.50") == "three dollars and fifty cents"
