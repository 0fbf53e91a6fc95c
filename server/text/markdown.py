"""Markdown (CommonMark, with tables) to blocks, as a listener would want it read.

Headings, paragraphs and list items are blocks (a pause follows each); emphasis markers vanish; a
link reads its text, inline code its content, an image its alt text; raw HTML is dropped. Fenced
and indented code and tables are not read: each becomes its configured placeholder sentence, or
nothing when that is empty. Offsets are found by locating each text in the source, in order;
text markdown rewrote (entities, escapes) keeps its block's span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from markdown_it import MarkdownIt
from markdown_it.token import Token

from server.text.phonemes import with_inline_phonemes
from server.text.spans import Block, Piece

_SKIPPED_INLINE: Final = frozenset({"html_inline"})


@dataclass(frozen=True)
class MarkdownRules:
    """What code blocks and tables become (empty: skipped silently)."""

    code_text: str = "Code block omitted."
    table_text: str = "Table omitted."


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


class _Source:
    """Line starts, to turn a block's line range into code point offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = [0]
        for index, char in enumerate(text):
            if char == "\n":
                self.lines.append(index + 1)

    def span(self, token: Token) -> tuple[int, int]:
        if token.map is None:
            return 0, len(self.text)
        first, last = token.map
        start = self.lines[min(first, len(self.lines) - 1)]
        end = self.lines[last] if last < len(self.lines) else len(self.text)
        return start, end


def parse_markdown(document: str, rules: MarkdownRules) -> list[Block]:
    """The blocks of a markdown document, in reading order."""
    source = _Source(document)
    tokens = _parser().parse(document)
    blocks: list[Block] = []
    table_at: int | None = None
    for index, token in enumerate(tokens):
        if token.type == "table_open":
            table_at = index
            if rules.table_text:
                blocks.append(_placeholder(rules.table_text, source.span(token)))
        elif token.type == "table_close":
            table_at = None
        elif table_at is not None:
            continue
        elif token.type in ("fence", "code_block"):
            if rules.code_text:
                blocks.append(_placeholder(rules.code_text, source.span(token)))
        elif token.type == "inline":
            block = _inline(token, source)
            if block:
                blocks.append(block)
    return blocks


def _placeholder(text: str, span: tuple[int, int]) -> Block:
    return (Piece(text, *span, literal=True),)


def _inline(token: Token, source: _Source) -> Block:
    """A paragraph's, heading's or list item's inline content as pieces."""
    start, end = source.span(token)
    cursor = start
    pieces: list[Piece] = []

    def add(text: str, literal: bool = False) -> None:
        nonlocal cursor
        if not text:
            return
        found = source.text.find(text, cursor, end)
        if found >= 0:
            pieces.append(Piece(text, found, found + len(text), literal=literal))
            cursor = found + len(text)
        else:  # markdown rewrote it (an entity, an escape): the span of the rest of the block
            pieces.append(Piece(text, cursor, end, literal=literal))

    for child in token.children or []:
        kind = child.type
        if kind == "text":
            add(child.content)
        elif kind == "code_inline":  # read as written: no sentence ends inside, no number rules
            add(child.content, literal=True)
        elif kind in ("softbreak", "hardbreak"):
            pieces.append(Piece(" ", cursor, cursor, literal=True))
        elif kind == "image":
            alt = "".join(c.content for c in child.children or [] if c.type == "text") or child.content
            add(alt)
        elif kind in _SKIPPED_INLINE:
            continue
    return tuple(with_inline_phonemes(pieces))
