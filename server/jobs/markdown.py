"""Markdown documents for jobs: each block a segment, each sentence its own markdown source.

A job sends each sentence as `/tts` would get it with `text_format=markdown`, so emphasis markers
vanish and links read their text, as they do for the whole document. A block is a heading,
paragraph or list item (its span: its lines, from markdown-it's line map); code and tables are
read as their placeholder sentence, as by `/tts`. A block's sentences are found by the front-end's
segmenter in what the block says (markup left out; inline code and phonemes stand as one word),
then cut out of the block's inline source (which has no container markers such as `>` or list
bullets) at the whitespace between them, so markup around a word stays with its sentence.

A sentence cut out of markup that spans two sentences (`**One. Two.**`) would show the cut markers
as text ("asterisk"), and one starting with a block marker (`1986.`, `- and`) would be read as a
list: such characters are dropped or escaped, so each sentence reads as it does in the document.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from itertools import pairwise
from typing import Final

from markdown_it import MarkdownIt
from markdown_it.helpers import parseLinkDestination, parseLinkTitle
from markdown_it.token import Token

from server.jobs.pieces import Document, Segment, SegmentKind, SplitRules, cut_spans, trimmed
from server.text.markdown import InlineKind, inline_items, markdown_blocks, markdown_parser
from server.text.phonemes import INLINE
from server.text.sentences import sentence_spans

_ASCII_PUNCTUATION: Final = re.compile(r"[!-/:-@\[-`{-~]")  # what CommonMark lets a backslash escape
_ENTITY: Final = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_MARKUP: Final = frozenset("*_`[]!<>\\")  # may stand before what a block says (and is not said)
_KINDS: Final[dict[str, SegmentKind]] = {"heading": "heading", "list_item": "list_item"}
_PLACEHOLDER: Final = "x"  # what the segmenter sees for each character of inline code or phonemes


def _aligned(source: str, cursor: int, text: str) -> tuple[list[int], int] | None:
    """Where each character of `text` (as markdown read it) is in `source`, from `cursor` past
    markup and whitespace, through escapes and entities; None where the source differs."""
    end = len(source)
    while (
        cursor < end and source[cursor] != text[0] and (source[cursor] in _MARKUP or source[cursor].isspace())
    ):
        cursor += 1
    positions: list[int] = []
    index = 0
    while index < len(text):
        char = text[index]
        entity = _ENTITY.match(source, cursor)
        decoded = html.unescape(entity.group()) if entity else ""
        if entity and text.startswith(decoded, index):
            positions += [cursor] * len(decoded)
            cursor = entity.end()
            index += len(decoded)
        elif cursor < end and source[cursor] == char:
            positions.append(cursor)
            cursor += 1
            index += 1
        elif source.startswith("\\", cursor) and source[cursor + 1 : cursor + 2] == char:
            positions.append(cursor + 1)
            cursor += 2
            index += 1
        else:
            return None
    return positions, cursor


def _after_destination(source: str, cursor: int) -> int:
    """Past the end of a link's text: `](destination "title")`, `][label]` or `]`."""
    end = len(source)
    while cursor < end and source[cursor] in "*_`":  # emphasis closing inside the link text
        cursor += 1
    if not source.startswith("]", cursor):
        return cursor  # an autolink's ">" and the like: nothing to skip
    position = cursor + 1
    if source.startswith("[", position):
        label = source.find("]", position)
        return label + 1 if label >= 0 else position
    if not source.startswith("(", position):
        return position
    position += 1
    for parse in (parseLinkDestination, parseLinkTitle):
        while position < end and source[position].isspace():
            position += 1
        found = parse(source, position, end)
        if found.ok:
            position = found.pos
    while position < end and source[position].isspace():
        position += 1
    return position + 1 if source.startswith(")", position) else cursor + 1


def _located(token: Token, source: str) -> Iterator[tuple[InlineKind, str, list[int]]]:
    """What a block's inline content says, each character with its offset in `source` (the
    token's inline content); -1 where it has none (a line break, text the source does not hold)."""
    cursor = 0
    for kind, text in inline_items(token):
        if kind == "link_end":
            cursor = _after_destination(source, cursor)
        elif kind == "html":
            found = source.find(text, cursor)
            cursor = found + len(text) if found >= 0 else cursor
        elif kind == "break" or not text:
            yield kind, text, [-1] * len(text)
        elif (aligned := _aligned(source, cursor, text)) is not None:
            positions, cursor = aligned
            yield kind, text, positions
        elif (found := source.find(text, cursor)) >= 0:
            cursor = found + len(text)
            yield kind, text, list(range(found, cursor))
        else:
            yield kind, text, [-1] * len(text)


class _Inline:
    """A block's inline source, what it says, and which source characters are said (not markup)."""

    def __init__(self, token: Token) -> None:
        self.source = token.content
        self.is_text = bytearray(len(self.source))
        self.positions: list[int] = []  # of each character of `text` in the source
        parts: list[str] = []
        for kind, text, positions in _located(token, self.source):
            for position in positions:
                if position >= 0:
                    self.is_text[position] = 1
            self.positions += positions
            parts.append(_PLACEHOLDER * len(text) if kind == "code" and not text.isspace() else text)
        # Inline phonemes (`[[ ... ]]`) are one word to the segmenter, as on /tts.
        self.text = INLINE.sub(lambda match: _PLACEHOLDER * len(match.group()), "".join(parts))

    def sentences(self, language: str) -> list[tuple[int, int]]:
        """Each sentence's span in the inline source: its first said character to its last."""
        found: list[tuple[int, int]] = []
        for start, end in sentence_spans(self.text, language):
            known = [self.positions[i] for i in range(start, end) if not self.text[i].isspace()]
            known = [position for position in known if position >= 0]
            if not known:
                continue
            first, last = known[0], known[-1] + 1
            if found and first < found[-1][1]:  # out of order (text found far on): keep them together
                found[-1] = (found[-1][0], max(found[-1][1], last))
            else:
                found.append((first, last))
        return found

    def cuts(self, language: str) -> list[tuple[int, int]]:
        """The source cut into sentences at the first whitespace between each two (closing markup
        stays with the sentence before, opening markup goes with the one after)."""
        spans = self.sentences(language)
        cuts: list[tuple[int, int]] = []
        start = 0
        for (_, end), (following, _) in pairwise(spans):
            gap = self.source[end:following]
            space = next((i for i, char in enumerate(gap) if char.isspace()), len(gap))
            cuts.append((start, end + space))
            start = end + space
        if spans:
            cuts.append((start, len(self.source)))
        return cuts

    def standalone(self, start: int, end: int, parser: MarkdownIt) -> str:
        """`source[start:end]` as a document that reads as it did in the block."""
        text = self.source[start:end]
        stray: set[int] = set()  # markup in the block, read as text here
        for token in parser.parse(text):
            if token.type == "inline":
                for _, said, positions in _located(token, text):
                    stray.update(
                        position
                        for position, char in zip(positions, said, strict=True)
                        if position >= 0 and not char.isspace() and not self.is_text[start + position]
                    )
        if stray:
            text = "".join(char for i, char in enumerate(text) if i not in stray).strip()
        return _as_paragraph(text, parser)


def _as_paragraph(text: str, parser: MarkdownIt) -> str:
    """Text that starts like a block marker (`# `, `- `, `> `, `1986.`) escaped to read as a paragraph."""
    tokens = parser.parse(text)
    if tokens and tokens[0].type not in ("paragraph_open", "html_block"):
        marker = _ASCII_PUNCTUATION.search(text)
        if marker is not None:
            text = f"{text[: marker.start()]}\\{text[marker.start() :]}"
    return text


def _escaped(text: str) -> str:
    """Text read literally in markdown (a placeholder sentence)."""
    return _ASCII_PUNCTUATION.sub(lambda match: "\\" + match.group(), text)


def split_markdown(text: str, rules: SplitRules) -> Document:
    """A markdown document's blocks and the markdown source of each of their sentences."""
    parser = markdown_parser()
    sentences: list[str] = []
    segments: list[Segment] = []
    for block in markdown_blocks(text):
        kind = _KINDS.get(block.kind, "paragraph")  # code and tables: a paragraph read as a placeholder
        spoken: list[str] = []
        if block.inline is None:
            placeholder = rules.markdown.code_text if block.kind == "code" else rules.markdown.table_text
            if placeholder.strip():
                spoken.append(_escaped(placeholder))
        else:
            inline = _Inline(block.inline)
            for start, end in inline.cuts(rules.language):
                for first, last in cut_spans(inline.source, start, end, rules.sentence_chars):
                    sentence = inline.standalone(first, last, parser)
                    if sentence.strip():
                        spoken.append(sentence)
        if spoken:
            segments.append(
                Segment(kind, *trimmed(text, block.start, block.end), len(sentences), len(spoken))
            )
            sentences += spoken
    return Document(tuple(sentences), tuple(segments))
