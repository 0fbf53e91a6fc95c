"""A long document as the requests a job speaks one by one, grouped into segments.

A segment is a paragraph (lines between blank lines) or a heading line (`# Title`); each keeps
its span in the submitted text so a client can match the audio's segments to its source. Its
sentences are found by the text front-end's segmenter (pysbd, in the voice's language), so "Dr.
Smith", "e.g. this" or "3.14" end no sentence in a job either; each is normalized exactly as
`/tts` normalizes text, so a sentence of a job and the same sentence sent to `/tts` share one
cache key (and one synthesis). Splitting is pure and blocking: the runner calls it in a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from server.text.clean import normalize_text
from server.text.sentences import sentence_spans

MAX_SENTENCE_CHARS: Final = 400  # a longer run without a sentence end is cut at a space
_BLOCK_BREAK: Final = re.compile(r"\n[ \t\r\f\v]*\n")
_HEADING: Final = re.compile(r"#{1,6}[ \t]+")

SegmentKind = Literal["paragraph", "heading"]


@dataclass(frozen=True)
class Segment:
    """A paragraph or heading: its span in the submitted text and its sentences."""

    kind: SegmentKind
    start: int  # character offsets into the submitted text, end exclusive
    end: int
    first: int  # index of its first sentence in the document
    count: int  # how many sentences it has


@dataclass(frozen=True)
class Document:
    sentences: tuple[str, ...]  # normalized, each one /tts request
    segments: tuple[Segment, ...]


def cut_long(piece: str, max_chars: int) -> list[str]:
    """A run longer than `max_chars` cut at spaces (at a character where a word is longer)."""
    pieces: list[str] = []
    while len(piece) > max_chars:
        cut = piece.rfind(" ", 0, max_chars + 1)
        cut = cut if cut > max_chars // 4 else max_chars
        pieces.append(piece[:cut].strip())
        piece = piece[cut:].strip()
    if piece:
        pieces.append(piece)
    return pieces


def split_sentences(text: str, language: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Normalized text cut into the front-end's sentences; a run longer than `max_chars` is cut at a space."""
    text = normalize_text(text)
    sentences: list[str] = []
    for start, end in sentence_spans(text, language):
        sentences += cut_long(text[start:end].strip(), max_chars)
    return sentences


def _blocks(text: str) -> list[tuple[int, int]]:
    """Spans of the text between blank lines."""
    spans, start = [], 0
    for match in _BLOCK_BREAK.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return spans


def _segments_of(text: str, start: int, end: int) -> list[tuple[SegmentKind, int, int]]:
    """A block's heading lines, each on its own, and the runs of other lines between them."""
    found: list[tuple[SegmentKind, int, int]] = []
    run_start: int | None = None
    position = start
    for line in text[start:end].splitlines(keepends=True):
        line_end = position + len(line)
        if _HEADING.match(line.lstrip()):
            if run_start is not None:
                found.append(("paragraph", run_start, position))
                run_start = None
            found.append(("heading", position, line_end))
        elif run_start is None:
            run_start = position
        position = line_end
    if run_start is not None:
        found.append(("paragraph", run_start, end))
    return found


def split_document(text: str, language: str, max_sentence_chars: int = MAX_SENTENCE_CHARS) -> Document:
    """A plain-text document's segments and sentences; `language` is the segmenter's (`en`)."""
    sentences: list[str] = []
    segments: list[Segment] = []
    for block_start, block_end in _blocks(text):
        for kind, start, end in _segments_of(text, block_start, block_end):
            source = text[start:end]
            if kind == "heading":
                source = _HEADING.sub("", source.lstrip(), count=1)
            spoken = split_sentences(source, language, max_sentence_chars)
            if not spoken:
                continue
            # Trim the span to the text itself (no surrounding whitespace or newline).
            raw = text[start:end]
            start += len(raw) - len(raw.lstrip())
            end -= len(raw) - len(raw.rstrip())
            segments.append(Segment(kind, start, end, len(sentences), len(spoken)))
            sentences.extend(spoken)
    return Document(tuple(sentences), tuple(segments))
