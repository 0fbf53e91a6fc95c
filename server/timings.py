"""Word timings: which written word each phoneme says, and where each word lies in the audio.

The front-end gives each segment's written words (with their source offsets); espeak gives the
phonemes, with word breaks. `segment_phonemes` joins a segment's runs and marks the written
word each phoneme belongs to; after the encoder has run, the frames per phoneme
(`Voice.phoneme_frames`) place each word in the flight's samples, and `word_timings` lists every
word with its seconds and offsets. Pure apart from espeak (blocking: the text thread runs it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from server.synthesis.voice import Voice
from server.text.spans import Segment, TextPlan
from server.text.utterances import WORD_BREAK, Utterance, join_sentences
from server.text.words import assign

# Punctuation espeak keeps as phonemes: its pause belongs to no word.
PAUSE_PHONEMES: Final = frozenset(".,;:!?—…")
# Punctuation at a word's ends that espeak never says as a word of its own (unlike "*", "/",
# "=", or a leading "." it reads as "dot").
_LEADING: Final = "\"'("
_TRAILING: Final = ".,;!?\"')"
_ROMAN: Final = frozenset("IVXLCDM")


def segment_phonemes(voice: Voice, segment: Segment) -> tuple[list[str], list[int | None]]:
    """Blocking (espeak): a segment's runs as one run of phonemes, word breaks between runs, and
    for each phoneme the index of the written word (in the segment) it belongs to, if any."""
    phonemes: list[str] = []
    owners: list[int | None] = []
    base = 0
    for run in segment.runs:
        if run.phonemes:
            part = list(run.phonemes)
            part_owners: list[int | None] = [base if run.words else None] * len(part)
        else:
            part = join_sentences(voice.phonemize(run.text))
            spoken = [word.spoken for word in run.words]
            if sum(spoken) != _phoneme_words(part):
                # espeak merged words ("on the" is one) or expanded something normalization
                # left ("687,684,949", "1999"): count each word as espeak says it alone.
                spoken = [_said_alone(voice, w.said or w.text) for w in run.words]
            part_owners = _owners(part, spoken, base)
        if part:
            if phonemes:
                phonemes.append(WORD_BREAK)
                owners.append(None)
            phonemes.extend(part)
            owners.extend(part_owners)
        base += len(run.words)
    return phonemes, owners


def _said_alone(voice: Voice, text: str) -> int:
    """How many words espeak makes of one written word said alone.

    espeak merges function words in nearly every English sentence, so this runs for most
    words of most sentences: one espeak call each cost a 44-word sentence 6 ms before its first
    audio. A plain word (ASCII letters, perhaps apostrophes, one case pattern, with ordinary
    punctuation at its ends) is one word to espeak, so only the others are asked: numbers,
    symbols, camel case ("iPhone" is two), Roman numerals ("XIV" is "Roman fourteen").
    """
    core = text.lstrip(_LEADING).rstrip(_TRAILING)
    letters = core.replace("'", "")
    if (
        letters.isascii()
        and letters.isalpha()
        and (core.islower() or core.isupper() or core.istitle())
        and not set(letters.upper()) <= _ROMAN
    ):
        return 1
    return max(1, _phoneme_words(join_sentences(voice.phonemize(text))))


def _phoneme_words(phonemes: list[str]) -> int:
    """How many words espeak made: runs of phonemes between word breaks."""
    return sum(
        1 for i, p in enumerate(phonemes) if p != WORD_BREAK and (i == 0 or phonemes[i - 1] == WORD_BREAK)
    )


def _owners(phonemes: list[str], spoken: list[int], base: int) -> list[int | None]:
    """The written word of each phoneme of a run (espeak's words shared out by `assign`)."""
    mapping = assign(spoken, _phoneme_words(phonemes))
    owners: list[int | None] = []
    index, inside = -1, False
    for phoneme in phonemes:
        if phoneme == WORD_BREAK:
            owners.append(None)
            inside = False
            continue
        if not inside:
            index, inside = index + 1, True
        owned = phoneme not in PAUSE_PHONEMES and index < len(mapping)
        owners.append(base + mapping[index] if owned else None)
    return owners


def utterance_owners(
    phonemes: list[str], owners: list[int | None], utterances: list[Utterance]
) -> list[tuple[int | None, ...]]:
    """Each utterance's slice of `owners`: utterances are `phonemes` in order, word breaks at the
    cuts stripped."""
    sliced: list[tuple[int | None, ...]] = []
    cursor = 0
    for utterance in utterances:
        while (
            cursor < len(phonemes) and phonemes[cursor] == WORD_BREAK and utterance.phonemes[0] != WORD_BREAK
        ):
            cursor += 1
        sliced.append(tuple(owners[cursor : cursor + len(utterance.phonemes)]))
        cursor += len(utterance.phonemes)
    return sliced


def word_timings(
    word_samples: Mapping[tuple[int, int], Sequence[int]],
    sample_rate: int,
    plan: TextPlan,
    *,
    partial: bool = False,
) -> list[dict[str, Any]]:
    """Every written word of the plan with its times in the audio and its offsets in the text
    (`partial`: only up to the last word timed so far).

    A word espeak said with no phonemes of its own (merged into a neighbour) gets a zero-length
    time where the previous word ended, so the list stays in order and complete."""
    rate = sample_rate
    timings: list[dict[str, Any]] = []
    last = 0
    upto = max(word_samples, default=(-1, -1)) if partial else None
    for segment_index, segment in enumerate(plan.segments):
        words = [word for run in segment.runs for word in run.words]
        for word_index, word in enumerate(words):
            if upto is not None and (segment_index, word_index) > upto:
                return timings
            span = word_samples.get((segment_index, word_index))
            first, end = (max(span[0], last), span[1]) if span else (last, last)
            last = max(last, end)
            timings.append(
                {
                    "word": word.text,
                    "start_s": _seconds(first, rate),
                    "end_s": _seconds(end, rate),
                    "char_start": word.start,
                    "char_end": word.end,
                }
            )
    return timings


def _seconds(sample: int, rate: int) -> float:
    """A sample's time cut (not rounded) to 0.1 ms: no word ends after the audio does."""
    return math.floor(sample * 10_000 / rate) / 10_000
