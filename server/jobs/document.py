"""A long document as the requests a job speaks one by one, grouped into segments.

Each piece is the text of one request `/tts` would accept in the job's text format, so a piece
of a job and the same text sent to `/tts` with the same fields share one cache key (and one
synthesis). Each segment keeps its span in the submitted text so a client can match the audio's
segments to its source. Plain text (here): a segment is a paragraph (lines between blank lines) or
a heading line (`# Title`), its pieces are its sentences, found by the text front-end's segmenter
(pysbd, in the voice's language) so "Dr. Smith", "e.g. this" or "3.14" end none, normalized as
`/tts` normalizes text. Markdown (`markdown.py`): a segment is a block, its pieces the markdown
source of its sentences. SSML (`ssml.py`): a segment is a paragraph, and is one piece.
Splitting is pure and blocking: the runner calls it in a thread.
"""

from __future__ import annotations

import re
from typing import Final

from server.jobs.markdown import split_markdown
from server.jobs.pieces import MAX_SENTENCE_CHARS, Document, Segment, SegmentKind, SplitRules, cut_spans
from server.jobs.ssml import split_ssml
from server.text.clean import normalize_text
from server.text.sentences import sentence_spans
from server.text.spans import TextFormat

__all__ = ["MAX_SENTENCE_CHARS", "Document", "Segment", "SplitRules", "split_document", "split_sentences"]

_BLOCK_BREAK: Final = re.compile(r"\n[ \t\r\f\v]*\n")
_HEADING: Final = re.compile(r"#{1,6}[ \t]+")


def split_sentences(text: str, language: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Normalized text cut into the front-end's sentences; a run longer than `max_chars` is cut at a space."""
    text = normalize_text(text)
    sentences: list[str] = []
    for start, end in sentence_spans(text, language):
        sentences += [text[a:b] for a, b in cut_spans(text, start, end, max_chars)]
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


def split_document(text: str, text_format: TextFormat, rules: SplitRules) -> Document:
    """A document's segments and pieces; malformed SSML raises the `InvalidRequest` /tts gives."""
    if text_format is TextFormat.MARKDOWN:
        return split_markdown(text, rules)
    if text_format is TextFormat.SSML:
        return split_ssml(text, rules)
    return split_plain(text, rules)


def split_plain(text: str, rules: SplitRules) -> Document:
    """A plain-text document's segments and sentences."""
    sentences: list[str] = []
    segments: list[Segment] = []
    for block_start, block_end in _blocks(text):
        for kind, start, end in _segments_of(text, block_start, block_end):
            source = text[start:end]
            if kind == "heading":
                source = _HEADING.sub("", source.lstrip(), count=1)
            spoken = split_sentences(source, rules.language, rules.sentence_chars)
            if not spoken:
                continue
            # Trim the span to the text itself (no surrounding whitespace or newline).
            raw = text[start:end]
            start += len(raw) - len(raw.lstrip())
            end -= len(raw) - len(raw.rstrip())
            segments.append(Segment(kind, start, end, len(sentences), len(spoken)))
            sentences.extend(spoken)
    return Document(tuple(sentences), tuple(segments))
