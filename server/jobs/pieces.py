"""What splitting a document for a job gives: its pieces (one /tts request each), grouped into segments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from server.text.markdown import MarkdownRules

MAX_SENTENCE_CHARS: Final = 400  # a longer run without a sentence end is cut at a space

SegmentKind = Literal["paragraph", "heading", "list_item"]


@dataclass(frozen=True)
class Segment:
    """A paragraph, heading or list item: its span in the submitted text and its pieces."""

    kind: SegmentKind
    start: int  # character offsets into the submitted text, end exclusive
    end: int
    first: int  # index of its first piece in the document
    count: int  # how many pieces it has


@dataclass(frozen=True)
class Document:
    sentences: tuple[str, ...]  # each the text of one /tts request in the job's text format
    segments: tuple[Segment, ...]
    voices: tuple[str, ...] = ()  # voices an SSML document switches to


@dataclass(frozen=True)
class SplitRules:
    """How a document is read: the segmenter's language, markdown's placeholders, /tts's limit."""

    language: str  # "en" (see `server.text.plan.segment_language`)
    markdown: MarkdownRules = field(default_factory=MarkdownRules)
    max_chars: int = 5000  # the longest text a /tts request takes (synthesis.max_text_chars)

    @property
    def sentence_chars(self) -> int:
        return min(MAX_SENTENCE_CHARS, self.max_chars)


def trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """`[start, end)` without the whitespace at either end of `text[start:end]`."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def cut_spans(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """`text[start:end]` without its surrounding whitespace, cut at spaces into runs of at most
    `max_chars` (at a character where a word is longer); none when it is only whitespace."""
    spans: list[tuple[int, int]] = []
    start, end = trimmed(text, start, end)
    while end - start > max_chars:
        cut = text.rfind(" ", start, start + max_chars + 1) - start
        cut = cut if cut > max_chars // 4 else max_chars
        spans.append((start, start + cut))
        start, end = trimmed(text, start + cut, end)
    if start < end:
        spans.append((start, end))
    return spans
