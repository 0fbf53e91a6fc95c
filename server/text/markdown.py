"""Markdown (CommonMark, with tables) to blocks, as a listener would want it read.

Headings, paragraphs and list items are blocks (a pause follows each); emphasis markers vanish; a
link reads its text, inline code its content, an image its alt text; raw HTML is dropped. Fenced
and indented code and tables are not read: each becomes its configured placeholder sentence, or
nothing when that is empty. Offsets are found by locating each text in the source, in order;
text markdown rewrote (entities, escapes) keeps its block's span. `markdown_blocks` and
`inline_items` are the two steps on their own: jobs use them to speak a document block by block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.token import Token

from server.text.phonemes import with_inline_phonemes
from server.text.spans import Block, Piece


@dataclass(frozen=True)
class MarkdownRules:
    """What code blocks and tables become (empty: skipped silently)."""

    code_text: str = "Code block omitted."
    table_text: str = "Table omitted."


def markdown_parser() -> MarkdownIt:
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


BlockKind = Literal["heading", "paragraph", "list_item", "code", "table"]
InlineKind = Literal["text", "code", "break", "html", "link_end"]


@dataclass(frozen=True)
class MarkdownBlock:
    """A block as a reader meets it: its kind, its lines' span in the source and its inline token."""

    kind: BlockKind
    start: int
    end: int
    inline: Token | None  # None for code and tables, which are read as their placeholder


def markdown_blocks(document: str) -> list[MarkdownBlock]:
    """The blocks of a markdown document, in reading order (raw HTML blocks are not read)."""
    source = _Source(document)
    tokens = markdown_parser().parse(document)
    blocks: list[MarkdownBlock] = []
    in_table = False
    items = 0  # list items open around the current token
    for index, token in enumerate(tokens):
        if token.type == "table_open":
            in_table = True
            blocks.append(MarkdownBlock("table", *source.span(token), None))
        elif token.type == "table_close":
            in_table = False
        elif in_table:
            continue
        elif token.type == "list_item_open":
            items += 1
        elif token.type == "list_item_close":
            items -= 1
        elif token.type in ("fence", "code_block"):
            blocks.append(MarkdownBlock("code", *source.span(token), None))
        elif token.type == "inline":
            heading = index > 0 and tokens[index - 1].type == "heading_open"
            kind: BlockKind = "heading" if heading else "list_item" if items else "paragraph"
            blocks.append(MarkdownBlock(kind, *source.span(token), token))
    return blocks


def inline_items(token: Token) -> Iterator[tuple[InlineKind, str]]:
    """What a block's inline content says, in order: text (links read their text, images their alt
    text), inline code (read as written) and line breaks. Two kinds say nothing but mark the source:
    raw HTML (as written) and the end of a link's text or an image's alt (its destination follows)."""
    for child in token.children or []:
        kind = child.type
        if kind == "text":
            yield "text", child.content
        elif kind == "code_inline":
            yield "code", child.content
        elif kind in ("softbreak", "hardbreak"):
            yield "break", " "
        elif kind == "html_inline":
            yield "html", child.content
        elif kind == "link_close":
            yield "link_end", ""
        elif kind == "image":
            alt = "".join(c.content for c in child.children or [] if c.type == "text") or child.content
            yield "text", alt
            yield "link_end", ""


def parse_markdown(document: str, rules: MarkdownRules) -> list[Block]:
    """The blocks of a markdown document, in reading order."""
    blocks: list[Block] = []
    for block in markdown_blocks(document):
        if block.inline is None:
            placeholder = rules.code_text if block.kind == "code" else rules.table_text
            if placeholder:
                blocks.append((Piece(placeholder, block.start, block.end, literal=True),))
            continue
        pieces = _inline(block.inline, document, block.start, block.end)
        if pieces:
            blocks.append(pieces)
    return blocks


def _inline(token: Token, document: str, start: int, end: int) -> Block:
    """A paragraph's, heading's or list item's inline content as pieces."""
    cursor = start
    pieces: list[Piece] = []

    def add(text: str, literal: bool = False) -> None:
        nonlocal cursor
        if not text:
            return
        found = document.find(text, cursor, end)
        if found >= 0:
            pieces.append(Piece(text, found, found + len(text), literal=literal))
            cursor = found + len(text)
        else:  # markdown rewrote it (an entity, an escape): the span of the rest of the block
            pieces.append(Piece(text, cursor, end, literal=literal))

    for kind, text in inline_items(token):
        if kind == "break":
            pieces.append(Piece(" ", cursor, cursor, literal=True))
        elif kind in ("text", "code"):  # inline code is read as written: no sentence ends inside
            add(text, literal=kind == "code")
    return tuple(with_inline_phonemes(pieces))
