"""Blocks to segments: sentences found with pysbd, breaks and voice or rate changes honoured.

Each sentence becomes one segment (one utterance); abbreviations ("Dr.", "e.g."), initials,
decimals and ellipses do not end one. After a sentence comes `Pauses.sentence_s` of silence,
after a block (paragraph, heading, list item) `Pauses.paragraph_s`, and where the document asks
for a break, exactly its time. A change of voice or rate also starts a new segment, without a pause.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import pysbd
from pysbd.languages import LANGUAGE_CODES

from server.text.clean import normalize_text
from server.text.spans import Block, Piece, Run, Segment, Word
from server.text.words import written_words

# Where pysbd has no rules for a language: a sentence ends at . ! ? followed by a space.
_FALLBACK_END: Final = re.compile(r"(?<=[.!?…。！？])\s+")
# A sentence's last characters when it is complete: an end mark, then closing quotes or brackets.
_ENDED: Final = re.compile(r"[.!?…。！？][\"'”’)\]]*\s*$")
# An atomic piece (phonemes, inline code, say-as words) stands in the text pysbd sees as one
# neutral word of its length, so no sentence ends inside it.
_PLACEHOLDER: Final = "x"


@dataclass(frozen=True)
class Pauses:
    """Silence added after a sentence and after a block, in seconds."""

    sentence_s: float = 0.0
    paragraph_s: float = 0.3


_per_thread = threading.local()


def _segmenter(language: str) -> pysbd.Segmenter:
    """This thread's pysbd segmenter for `language`.

    One per thread: `Segmenter.segment` keeps the text it works on in the instance, so two
    threads sharing one (a request planned on the IOLoop, a job's document in its text thread)
    would find each other's sentences.
    """
    segmenters: dict[str, pysbd.Segmenter] | None = getattr(_per_thread, "segmenters", None)
    if segmenters is None:
        segmenters = _per_thread.segmenters = {}
    segmenter = segmenters.get(language)
    if segmenter is None:
        segmenter = segmenters[language] = pysbd.Segmenter(language=language, clean=False, char_span=True)
    return segmenter


def sentence_spans(text: str, language: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence of `text` (trailing whitespace included), in order."""
    if not text.strip():
        return []
    if language in LANGUAGE_CODES:
        spans = [(span.start, span.end) for span in _segmenter(language).segment(text)]
    else:
        spans, start = [], 0
        for match in _FALLBACK_END.finditer(text):
            spans.append((start, match.end()))
            start = match.end()
        spans.append((start, len(text)))
    # pysbd's spans skip nothing in practice; close any gap so no text is ever lost.
    fixed: list[tuple[int, int]] = []
    cursor = 0
    for _start, end in spans:
        if end <= cursor:
            continue
        fixed.append((cursor, end))
        cursor = end
    if cursor < len(text):
        if fixed:
            fixed[-1] = (fixed[-1][0], len(text))
        else:
            fixed.append((0, len(text)))
    return fixed


def _stretches(block: Block) -> Iterable[tuple[list[Piece], float | None, bool]]:
    """Runs of pieces said alike (one voice, one rate), each with what ends it: a break's pause,
    a sentence end, or neither (a change of voice or rate, the block's end)."""
    current: list[Piece] = []
    for piece in block:
        if piece.is_break:
            yield current, piece.pause_s, piece.ends_sentence
            current = []
            continue
        if current and (piece.voice, piece.rate) != (current[-1].voice, current[-1].rate):
            yield current, None, False
            current = []
        current.append(piece)
    yield current, None, False


def _split(pieces: Sequence[Piece], language: str) -> list[list[Piece]]:
    """The pieces of one stretch, cut into sentences (a text piece may be cut inside)."""
    seen = [_seen(piece) for piece in pieces]
    text = "".join(seen)
    starts: list[int] = []
    position = 0
    for part in seen:
        starts.append(position)
        position += len(part)
    sentences: list[list[Piece]] = []
    for start, end in sentence_spans(text, language):
        sentence: list[Piece] = []
        for piece, at, part in zip(pieces, starts, seen, strict=True):
            length = len(part)
            low, high = max(start, at), min(end, at + length)
            if low >= high:
                continue
            if piece.phonemes or piece.literal or (low == at and high == at + length):
                sentence.append(piece)
            else:
                sentence.append(_cut(piece, low - at, high - at))
        sentences.append(sentence)
    return sentences


def _seen(piece: Piece) -> str:
    """The text pysbd sees for a piece."""
    if piece.phonemes:
        return _PLACEHOLDER * len(piece.phonemes)
    if piece.literal and not piece.text.isspace():
        return _PLACEHOLDER * len(piece.text)
    return piece.text


def _cut(piece: Piece, start: int, end: int) -> Piece:
    exact = piece.end - piece.start == len(piece.text)
    span = (piece.start + start, piece.start + end) if exact else (piece.start, piece.end)
    return Piece(piece.text[start:end], *span, literal=piece.literal, rate=piece.rate, voice=piece.voice)


def _runs(pieces: Sequence[Piece], normalize: Callable[[str], str], source: str) -> tuple[Run, ...]:
    """A sentence's pieces as runs: adjacent text pieces joined, phoneme pieces as they are."""
    runs: list[Run] = []
    texts: list[str] = []
    span: list[int] = []
    words: list[Word] = []

    def flush() -> None:
        text = normalize_text("".join(texts))
        if text:
            runs.append(Run(text, min(span), max(span), words=tuple(words)))
        texts.clear()
        span.clear()
        words.clear()

    for piece in pieces:
        if piece.phonemes:
            flush()
            written = source[piece.start : piece.end] or "".join(piece.phonemes)
            word = Word(written, piece.start, piece.end)
            runs.append(Run("", piece.start, piece.end, piece.phonemes, (word,)))
            continue
        texts.append(piece.text if piece.literal else normalize(piece.text))
        span.extend((piece.start, piece.end))
        words.extend(written_words(piece, source, normalize))
    flush()
    return tuple(runs)


def segment(
    blocks: Iterable[Block],
    language: str,
    pauses: Pauses,
    normalize: Callable[[str], str] = str,
    source: str = "",
) -> list[Segment]:
    """The segments of a document's blocks; `normalize` rewrites words for speaking (numbers...).

    `source` is the document the blocks' offsets point into (for the written words)."""
    segments: list[Segment] = []
    for block in blocks:
        block_segments: list[Segment] = []
        for pieces, pause, ends_sentence in _stretches(block):
            said = len(block_segments)
            if pieces:
                first = pieces[0]
                for sentence in _split(pieces, language):
                    runs = _runs(sentence, normalize, source)
                    if runs:
                        block_segments.append(Segment(runs, pauses.sentence_s, first.rate, first.voice))
            if pause is not None:
                _set_pause(block_segments, pause)
            elif ends_sentence:
                _set_pause(block_segments, pauses.sentence_s)
            elif len(block_segments) > said and not _ENDED.search(block_segments[-1].text):
                # A change of voice or rate inside a sentence: the sentence goes on, unpaused.
                _set_pause(block_segments, 0.0)
        if block_segments and not _explicit(block):
            _set_pause(block_segments, max(block_segments[-1].pause_s, pauses.paragraph_s))
        segments.extend(block_segments)
    return segments


def _explicit(block: Block) -> bool:
    """Whether the block ends with a break: its time, not the paragraph's, follows it."""
    return bool(block) and block[-1].pause_s is not None


def _set_pause(segments: list[Segment], pause: float) -> None:
    """The last segment's pause; a break with nothing before it is a silent segment of its own."""
    if not segments:
        if pause > 0:
            segments.append(Segment((), pause))
        return
    last = segments[-1]
    segments[-1] = Segment(last.runs, pause, last.rate, last.voice)
