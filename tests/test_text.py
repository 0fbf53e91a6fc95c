"""Spec of text normalization (what "the same text" means) and chunk planning (when audio starts)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from server.text.clean import normalize_text
from server.text.utterances import CLAUSE_BREAKS, Utterance, plan_utterances


def test_normalize_composes_to_nfc():
    assert normalize_text("Cafe\u0301") == "Caf\u00e9"


def test_normalize_collapses_every_kind_of_whitespace_to_one_space():
    assert normalize_text("a \t\n\r\u00a0\u2003\u3000 b") == "a b"


def test_normalize_strips_leading_and_trailing_whitespace():
    assert normalize_text(" \n Hello. \t") == "Hello."


def test_normalize_removes_control_characters():
    assert normalize_text("He\x00l\x07l\x1bo\x7f\x85") == "Hello"


def test_normalize_removes_format_characters():
    # Zero-width space, bidi marks and the byte-order mark carry no speech.
    assert normalize_text("\ufeffHe\u200bllo\u200e \u202eworld\u2066") == "Hello world"


def test_normalize_removes_private_use_and_lone_surrogates():
    assert normalize_text("a\ue000b\ud800c") == "abc"


def test_normalize_keeps_emoji_zero_width_joiner_sequences():
    family = "\U0001f469\u200d\U0001f469\u200d\U0001f467"
    assert normalize_text(f"I love my {family}!") == f"I love my {family}!"


def test_normalize_keeps_non_latin_scripts():
    assert normalize_text("Привет,  мир。 你好") == "Привет, мир。 你好"


def test_normalize_result_is_nfc_even_when_a_removed_character_separated_a_mark():
    assert normalize_text("e\u200b\u0301") == "\u00e9"


@given(st.text())
@example("e\u200b\u0301")
def test_normalize_is_idempotent_and_yields_nfc(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert unicodedata.is_normalized("NFC", once)
    assert once == once.strip()
    assert "  " not in once


@given(st.text())
def test_normalize_treats_nfd_and_nfc_spellings_alike(text):
    assert normalize_text(unicodedata.normalize("NFD", text)) == normalize_text(
        unicodedata.normalize("NFC", text)
    )


def sentence(text: str) -> list[str]:
    """Espeak yields one phoneme per codepoint, punctuation and spaces included."""
    return list(text)


def joined(utterance: Utterance) -> str:
    return "".join(utterance.phonemes)


def test_each_sentence_is_one_utterance_however_short_or_long():
    # No clause or word cuts below the bound: windowed synthesis gives early audio instead.
    long_sentence = "bbbbbbbbbb, " * 10 + "end."
    utterances = plan_utterances([sentence("hɛlˈoʊ."), sentence(long_sentence)], max_phonemes=400)
    assert utterances == [Utterance(tuple("hɛlˈoʊ."), True), Utterance(tuple(long_sentence), True)]


def test_over_long_sentence_is_split_at_clause_breaks_within_the_bound():
    long_sentence = "bbbbbbbbbb, " * 10 + "end."
    utterances = plan_utterances([sentence("hi."), sentence(long_sentence)], max_phonemes=50)
    assert [joined(u) for u in utterances] == [
        "hi.",
        "bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb,",
        "bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb,",
        "bbbbbbbbbb, bbbbbbbbbb, end.",
    ]
    assert [u.ends_sentence for u in utterances] == [True, False, False, True]


def test_over_long_sentence_prefers_a_clause_break_over_a_later_word_break():
    text = "aaaaaaaa, bb cc dd ee ff gg hh ii jj kk."
    utterances = plan_utterances([sentence(text)], max_phonemes=30)
    assert joined(utterances[0]) == "aaaaaaaa,"


def test_over_long_sentence_falls_back_to_a_word_break_without_clause_breaks():
    text = "aaaaaaaaa bbbbbbbbb ccccccccc ddddddddd."
    utterances = plan_utterances([sentence(text)], max_phonemes=25)
    assert [joined(u) for u in utterances] == ["aaaaaaaaa bbbbbbbbb", "ccccccccc ddddddddd."]


def test_clause_break_too_close_to_the_start_is_not_used():
    # Cutting after two phonemes would leave a piece too short to be worth its own utterance.
    text = "a, bbbbbbbbb ccccccccc ddddddddd."
    utterances = plan_utterances([sentence(text)], max_phonemes=25)
    assert [joined(u) for u in utterances] == ["a, bbbbbbbbb ccccccccc", "ddddddddd."]


def test_hard_split_when_there_is_no_break_at_all():
    utterances = plan_utterances([sentence("x" * 100)], max_phonemes=40)
    assert [len(u.phonemes) for u in utterances] == [40, 40, 20]
    assert [u.ends_sentence for u in utterances] == [False, False, True]


def test_blank_sentences_make_no_utterances():
    assert plan_utterances([sentence("   "), [], sentence("a.")], max_phonemes=20) == [
        Utterance(tuple("a."), True)
    ]


def test_no_sentences_make_no_utterances():
    assert plan_utterances([], max_phonemes=20) == []


PHONEMES = st.sampled_from(["a", "b", "ɛ", "ˈ", " ", " ", ",", ";", ".", "?"])
SENTENCES = st.lists(st.lists(PHONEMES, max_size=120), max_size=6)
LIMITS = st.integers(16, 160)


@given(SENTENCES, LIMITS)
def test_utterances_respect_the_bound_and_are_never_empty(sentences, max_phonemes):
    for utterance in plan_utterances(sentences, max_phonemes):
        assert utterance.phonemes
        assert utterance.phonemes[0] != " "
        assert utterance.phonemes[-1] != " "
        assert len(utterance.phonemes) <= max_phonemes


@given(SENTENCES, LIMITS)
def test_utterances_keep_every_phoneme_in_order_dropping_only_spaces_at_cuts(sentences, max_phonemes):
    utterances = plan_utterances(sentences, max_phonemes)
    without_spaces = "".join(p for s in sentences for p in s if p != " ")
    assert "".join(p for u in utterances for p in u.phonemes if p != " ") == without_spaces
    # Inside an utterance nothing is dropped: each is a contiguous run of its sentence.
    for utterance in utterances:
        assert any(joined(utterance) in "".join(s) for s in sentences)


@given(SENTENCES, LIMITS)
def test_each_sentence_with_content_ends_exactly_one_utterance(sentences, max_phonemes):
    utterances = plan_utterances(sentences, max_phonemes)
    spoken = [s for s in sentences if any(p != " " for p in s)]
    assert sum(u.ends_sentence for u in utterances) == len(spoken)
    if utterances:
        assert utterances[-1].ends_sentence


@pytest.mark.parametrize("mark", sorted(CLAUSE_BREAKS))
def test_every_clause_break_is_a_split_point(mark):
    text = f"aaaaaaaaaa{mark} bbbbbbbbbb cccccccccc."
    utterances = plan_utterances([sentence(text)], max_phonemes=20)
    assert joined(utterances[0]) == f"aaaaaaaaaa{mark}"
