"""SSML documents for jobs: each paragraph (`<p>`) one request, a valid SSML document on its own.

A paragraph is spoken as one `/tts` request: its source as written, inside copies of the start
tags of every element around it (`speak` with its attributes and namespace declarations, `voice`,
`prosody`...) and their end tags, so it reads as it does in the whole document. A document
without paragraphs is one request. Content between paragraphs is a request of its own when it
says something; when it says nothing (whitespace, a lone `<break>`) it joins the paragraph after
it, so a break between paragraphs keeps its time (as silence at that paragraph's start). A job's
progress over SSML is therefore counted in paragraphs, and each must be within `/tts`'s limit.

The document is first parsed as `/tts` parses it (`parse_ssml`: no DTD, bounded depth, the same
errors); only then does expat, with no DTD to expand, give the positions of its tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from xml.parsers import expat

from server.errors import InvalidRequest, TextTooLong
from server.jobs.pieces import Document, Segment, SplitRules, trimmed
from server.text.clean import clean_document, normalize_text
from server.text.sayas import say_as
from server.text.ssml import parse_ssml

PARAGRAPHS: Final = frozenset({"p", "paragraph"})
# A start tag of a well-formed document (an attribute value may hold a ">").
_START_TAG: Final = re.compile(r"""<[^\s/>]+(?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*\s*(/?)>""")
# Characters XML forbids, which /tts removes before parsing: blanked for expat (offsets kept).
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(eq=False)
class _Element:
    name: str  # as written, with its prefix
    start: int  # its start tag's "<"
    open_end: int  # after its start tag
    close_start: int = -1  # its end tag's "<" (open_end for an empty element)
    end: int = -1  # after its end tag
    children: list[_Element] = field(default_factory=list)
    paragraphs: bool = False  # it is or holds a <p>

    @property
    def is_paragraph(self) -> bool:
        return self.name.rsplit(":", 1)[-1] in PARAGRAPHS


@dataclass(eq=False)
class _Part:
    """A paragraph, or a stretch of an element's content between paragraphs, inside `around`."""

    start: int
    end: int
    around: tuple[_Element, ...]
    span: tuple[int, int]  # the segment's span: the <p> element, or the stretch's own text


def _root(text: str) -> _Element:
    """The document's element tree with each element's offsets in `text` (well-formed already)."""
    offset = len(text) - len(text.lstrip())
    blanked = _NOT_XML.sub(" ", text)
    body = blanked[offset:]
    encoded = body.encode("utf-8")
    ascii = len(encoded) == len(body)
    read = [0, offset]  # bytes of `encoded` turned into characters so far, and those characters

    def position(byte: int) -> int:
        if ascii:
            return offset + byte
        read[1] += len(encoded[read[0] : byte].decode("utf-8"))  # events come in order
        read[0] = byte
        return read[1]

    parser = expat.ParserCreate()
    stack: list[_Element] = []
    tops: list[_Element] = []

    def started(name: str, _attributes: object) -> None:
        begin = position(parser.CurrentByteIndex)
        tag = _START_TAG.match(blanked, begin)
        assert tag is not None, "expat reported a start tag the pattern does not match"
        element = _Element(name, begin, tag.end())
        if tag.group(1):  # <p/>: empty
            element.close_start = element.end = tag.end()
        (stack[-1].children if stack else tops).append(element)
        stack.append(element)

    def ended(_name: str) -> None:
        element = stack.pop()
        if element.end < 0:
            element.close_start = position(parser.CurrentByteIndex)
            element.end = blanked.index(">", element.close_start) + 1
        element.paragraphs = element.is_paragraph or any(child.paragraphs for child in element.children)

    parser.StartElementHandler = started
    parser.EndElementHandler = ended
    parser.Parse(body, True)
    return tops[0]


def _parts(element: _Element, around: tuple[_Element, ...], text: str, found: list[_Part]) -> None:
    """The paragraphs inside `element` and the stretches of its content between them."""
    cursor = element.open_end

    def stretch(start: int, end: int) -> None:
        if start < end:
            found.append(_Part(start, end, around, trimmed(text, start, end)))

    for child in element.children:
        if not child.paragraphs:
            continue
        stretch(cursor, child.start)
        if child.is_paragraph:
            found.append(_Part(child.start, child.end, around, (child.start, child.end)))
        else:
            _parts(child, (*around, child), text, found)
        cursor = child.end
    stretch(cursor, element.close_start)


def _request(text: str, parts: list[_Part]) -> str:
    """Consecutive parts as one document: each inside copies of the elements around it, those
    they share opened once."""
    shared = 0
    while all(len(part.around) > shared for part in parts) and all(
        part.around[shared] is parts[0].around[shared] for part in parts
    ):
        shared += 1

    def opening(elements: tuple[_Element, ...]) -> str:
        return "".join(text[element.start : element.open_end] for element in elements)

    def closing(elements: tuple[_Element, ...]) -> str:
        return "".join(f"</{element.name}>" for element in reversed(elements))

    inner = "".join(
        f"{opening(part.around[shared:])}{text[part.start : part.end]}{closing(part.around[shared:])}"
        for part in parts
    )
    common = parts[0].around[:shared]
    return f"{opening(common)}{inner}{closing(common)}"


def _grouped(parts: list[_Part], says: list[bool]) -> list[tuple[list[_Part], _Part]]:
    """Each part that says something, with the silent ones before it (a break before a paragraph
    is silence at its start, where /tts keeps it; silent ones after the last join the last)."""
    groups: list[tuple[list[_Part], _Part]] = []
    waiting: list[_Part] = []
    for part, speaks in zip(parts, says, strict=True):
        waiting.append(part)
        if speaks:
            groups.append((waiting, part))
            waiting = []
    if groups:
        groups[-1][0].extend(waiting)
    return groups


def split_ssml(text: str, rules: SplitRules) -> Document:
    """An SSML document's paragraphs, each a document of its own; malformed SSML, or a paragraph
    longer than `/tts` takes, raises the error `/tts` would give."""

    def said(piece: str, kind: str, fmt: str | None) -> str | None:
        return say_as(piece, kind, fmt, rules.language)

    _, voices = parse_ssml(clean_document(text), said)  # as /tts reads it: its errors, word for word
    root = _root(text)
    parts: list[_Part] = []
    if root.paragraphs:
        _parts(root, (root,), text, parts)
    else:
        parts.append(_Part(0, len(text), (), trimmed(text, 0, len(text))))
    says = []
    for part in parts:
        blocks, _ = parse_ssml(clean_document(_request(text, [part])), said)
        says.append(any(piece.text.strip() or piece.phonemes for block in blocks for piece in block))
    if not any(says):
        raise InvalidRequest("text has nothing to speak", param="text")
    sentences: list[str] = []
    segments: list[Segment] = []
    for number, (group, speaker) in enumerate(_grouped(parts, says), 1):
        request = _request(text, group)
        span = speaker.span
        length = len(normalize_text(request))
        if length > rules.max_chars:
            line = text.count("\n", 0, span[0]) + 1
            raise TextTooLong(
                f"SSML paragraph {number} (line {line}) is {length} characters; a job speaks each "
                f"paragraph (<p>) as one request of at most {rules.max_chars}",
                param="text",
            )
        segments.append(Segment("paragraph", *span, len(sentences), 1))
        sentences.append(request)
    return Document(tuple(sentences), tuple(segments), voices)
