"""The phonemes of a segment as the utterances the encoder takes.

Each sentence is synthesized as one utterance (with the prosody Piper gives it); first audio
comes early from windowed synthesis, not from cutting the text. Only a sentence longer than
`max_sentence_phonemes` is split, at a clause or word break, to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# Phonemes after which a pause sounds natural (espeak keeps the punctuation as phonemes).
CLAUSE_BREAKS: Final = frozenset({",", ";", ":", "—", "–"})
WORD_BREAK: Final = " "


@dataclass(frozen=True)
class Utterance:
    """A run of phonemes the encoder takes at once: a sentence, or a piece of an over-long one."""

    phonemes: tuple[str, ...]
    ends_sentence: bool  # silence follows only a sentence end, not a split


def _split_at(phonemes: Sequence[str], limit: int) -> tuple[Sequence[str], Sequence[str]]:
    """Cut before `limit` at the last clause break, else the last word break, else hard."""
    if len(phonemes) <= limit:
        return phonemes, ()
    for breaks in (CLAUSE_BREAKS, {WORD_BREAK}):
        cut = max((i + 1 for i, p in enumerate(phonemes[:limit]) if p in breaks), default=0)
        if cut >= limit // 4:  # a tiny head would just move the latency to the next chunk
            return phonemes[:cut], phonemes[cut:]
    return phonemes[:limit], phonemes[limit:]


def _strip_space(phonemes: Sequence[str]) -> tuple[str, ...]:
    start, end = 0, len(phonemes)
    while start < end and phonemes[start] == WORD_BREAK:
        start += 1
    while end > start and phonemes[end - 1] == WORD_BREAK:
        end -= 1
    return tuple(phonemes[start:end])


def plan_utterances(sentences: Sequence[Sequence[str]], max_phonemes: int) -> list[Utterance]:
    """Sentences of phonemes to utterances: whole sentences, over-long ones split at breaks."""
    utterances: list[Utterance] = []
    for sentence in sentences:
        rest: Sequence[str] = _strip_space(sentence)
        while rest:
            head, rest = _split_at(rest, max_phonemes)
            head, rest = _strip_space(head), _strip_space(rest)
            if head:
                utterances.append(Utterance(head, ends_sentence=not rest))
    return utterances


def join_sentences(sentences: Sequence[Sequence[str]]) -> list[str]:
    """espeak's sentences of one segment as one run of phonemes.

    The segmenter already decided where sentences end; espeak still ends one at every period
    ("Dr." gives a falling "Doctor."), so a period that closes one of its inner pieces is dropped.
    """
    joined: list[str] = []
    for index, sentence in enumerate(sentences):
        phonemes = list(_strip_space(sentence))
        if index < len(sentences) - 1 and phonemes and phonemes[-1] == ".":
            phonemes.pop()
        if phonemes:
            if joined:
                joined.append(WORD_BREAK)
            joined.extend(phonemes)
    return joined
