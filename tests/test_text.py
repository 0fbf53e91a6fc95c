"""Spec of text normalization (what "the same text" means) and chunk planning (when audio starts)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from server.synthesis.text import CLAUSE_BREAKS, Chunk, normalize_text, plan_chunks


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


def joined(chunk: Chunk) -> str:
    return "".join(chunk.phonemes)


def test_short_sentences_are_one_chunk_each():
    chunks = plan_chunks([sentence("hɛlˈoʊ."), sentence("baɪ.")], first_max=60, chunk_max=300)
    assert chunks == [Chunk(tuple("hɛlˈoʊ."), True), Chunk(tuple("baɪ."), True)]


def test_first_chunk_is_split_at_the_last_clause_break_within_first_max():
    text = "aaaaaaaaaa, bbbbbbbbbb; cccccccccc dddddddddd."
    chunks = plan_chunks([sentence(text)], first_max=30, chunk_max=300)
    assert [joined(c) for c in chunks] == ["aaaaaaaaaa, bbbbbbbbbb;", "cccccccccc dddddddddd."]
    assert [c.ends_sentence for c in chunks] == [False, True]


def test_first_chunk_prefers_a_clause_break_over_a_later_word_break():
    text = "aaaaaaaa, bb cc dd ee ff gg hh ii jj kk."
    chunks = plan_chunks([sentence(text)], first_max=30, chunk_max=300)
    assert joined(chunks[0]) == "aaaaaaaa,"


def test_first_chunk_falls_back_to_a_word_break_without_clause_breaks():
    text = "aaaaaaaaa bbbbbbbbb ccccccccc ddddddddd."
    chunks = plan_chunks([sentence(text)], first_max=25, chunk_max=300)
    assert [joined(c) for c in chunks] == ["aaaaaaaaa bbbbbbbbb", "ccccccccc ddddddddd."]


def test_clause_break_too_close_to_the_start_is_not_used():
    # Cutting after two phonemes would only move the wait to the second chunk.
    text = "a, bbbbbbbbb ccccccccc ddddddddd."
    chunks = plan_chunks([sentence(text)], first_max=25, chunk_max=300)
    assert [joined(c) for c in chunks] == ["a, bbbbbbbbb ccccccccc", "ddddddddd."]


def test_later_chunks_are_whole_sentences_up_to_chunk_max():
    long_sentence = "bbbbbbbbbb, " * 10 + "end."
    chunks = plan_chunks([sentence("hi."), sentence(long_sentence)], first_max=8, chunk_max=300)
    assert [joined(c) for c in chunks] == ["hi.", long_sentence]


def test_over_long_later_sentence_is_split_at_clause_breaks_within_chunk_max():
    long_sentence = "bbbbbbbbbb, " * 10 + "end."
    chunks = plan_chunks([sentence("hi."), sentence(long_sentence)], first_max=8, chunk_max=50)
    assert [joined(c) for c in chunks] == [
        "hi.",
        "bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb,",
        "bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb, bbbbbbbbbb,",
        "bbbbbbbbbb, bbbbbbbbbb, end.",
    ]
    assert [c.ends_sentence for c in chunks] == [True, False, False, True]


def test_hard_split_when_there_is_no_break_at_all():
    chunks = plan_chunks([sentence("x" * 100)], first_max=30, chunk_max=40)
    assert [len(c.phonemes) for c in chunks] == [30, 40, 30]
    assert [c.ends_sentence for c in chunks] == [False, False, True]


def test_blank_sentences_make_no_chunks():
    assert plan_chunks([sentence("   "), [], sentence("a.")], first_max=10, chunk_max=20) == [
        Chunk(tuple("a."), True)
    ]


def test_no_sentences_make_no_chunks():
    assert plan_chunks([], first_max=10, chunk_max=20) == []


PHONEMES = st.sampled_from(["a", "b", "ɛ", "ˈ", " ", " ", ",", ";", ".", "?"])
SENTENCES = st.lists(st.lists(PHONEMES, max_size=120), max_size=6)
LIMITS = st.integers(8, 80).flatmap(lambda first: st.tuples(st.just(first), st.integers(16, 160)))


@given(SENTENCES, LIMITS)
def test_chunks_respect_their_limits_and_are_never_empty(sentences, limits):
    first_max, chunk_max = limits
    chunks = plan_chunks(sentences, first_max, chunk_max)
    for index, chunk in enumerate(chunks):
        assert chunk.phonemes
        assert chunk.phonemes[0] != " "
        assert chunk.phonemes[-1] != " "
        assert len(chunk.phonemes) <= (first_max if index == 0 else chunk_max)


@given(SENTENCES, LIMITS)
def test_chunks_keep_every_phoneme_in_order_dropping_only_spaces_at_cuts(sentences, limits):
    chunks = plan_chunks(sentences, *limits)
    without_spaces = "".join(p for s in sentences for p in s if p != " ")
    assert "".join(p for c in chunks for p in c.phonemes if p != " ") == without_spaces
    # Inside a chunk nothing is dropped: each chunk is a contiguous run of its sentence.
    for chunk in chunks:
        assert any(joined(chunk) in "".join(s) for s in sentences)


@given(SENTENCES, LIMITS)
def test_each_sentence_with_content_ends_exactly_one_chunk(sentences, limits):
    chunks = plan_chunks(sentences, *limits)
    spoken = [s for s in sentences if any(p != " " for p in s)]
    assert sum(c.ends_sentence for c in chunks) == len(spoken)
    if chunks:
        assert chunks[-1].ends_sentence


@given(SENTENCES, LIMITS)
def test_chunk_ends_sentence_only_on_the_sentence_last_chunk(sentences, limits):
    # Planning sentence by sentence shows which chunks belong to which sentence.
    first_max, chunk_max = limits
    chunks = plan_chunks(sentences, first_max, chunk_max)
    position = 0
    for s in sentences:
        own = plan_chunks([s], first_max if position == 0 else chunk_max, chunk_max)
        assert chunks[position : position + len(own)] == own
        position += len(own)
        if own:
            assert [c.ends_sentence for c in own] == [False] * (len(own) - 1) + [True]
    assert position == len(chunks)


@pytest.mark.parametrize("mark", sorted(CLAUSE_BREAKS))
def test_every_clause_break_is_a_split_point(mark):
    text = f"aaaaaaaaaa{mark} bbbbbbbbbb cccccccccc."
    chunks = plan_chunks([sentence(text)], first_max=20, chunk_max=300)
    assert joined(chunks[0]) == f"aaaaaaaaaa{mark}"
