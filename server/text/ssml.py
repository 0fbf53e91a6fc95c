"""SSML to blocks, parsed safely: no DTD (so no entity expansion, no external entities), bounded depth.

Supported: `speak`, `p` and `s` (a block; `s` ends a sentence), `break` (`time`, `strength`),
`prosody rate`, `sub alias`, `phoneme` (`alphabet="ipa"`, `ph`), `say-as` (`interpret-as`
characters, cardinal, ordinal, digits, date, time, telephone), `emphasis` (read normally) and
`voice name`. Other elements are ignored and their text read. Anything malformed is an
`InvalidRequest` (a 400) that says what and where; a document is never half-read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeTree
from defusedxml import DefusedXmlException

from server.errors import InvalidRequest
from server.text.phonemes import parse_ipa, with_inline_phonemes
from server.text.spans import Block, Piece

MAX_DEPTH: Final = 32  # real documents nest a few levels; a deep one is an attack on the walker
MAX_BREAK_S: Final = 10.0
MIN_RATE: Final = 0.25
MAX_RATE: Final = 4.0
STRENGTHS: Final = {
    "none": 0.0,
    "x-weak": 0.1,
    "weak": 0.2,
    "medium": 0.4,
    "strong": 0.7,
    "x-strong": 1.0,
}
RATES: Final = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
_TIME: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*")
_PERCENT: Final = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*%\s*")

# (text, interpret-as, format) -> the words to say
SayAs = Callable[[str, str, str | None], str | None]


def _tag(element: Element) -> str:
    """The local name: `{http://www.w3.org/2001/10/synthesis}speak` is `speak`."""
    tag = element.tag if isinstance(element.tag, str) else ""
    return tag.rsplit("}", 1)[-1]


def _fail(message: str) -> InvalidRequest:
    return InvalidRequest(f"SSML: {message}", param="text")


def parse_xml(document: str) -> Element:
    """The document's root element, parsed with DTDs forbidden; errors name line and column."""
    try:
        root = SafeTree.fromstring(document, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        raise _fail(f"not well-formed XML ({reason}) at line {line}, column {column + 1}") from None
    except DefusedXmlException:
        raise _fail("DTDs and entity declarations are not allowed") from None
    if _tag(root) != "speak":
        raise _fail(f"the root element must be <speak>, not <{_tag(root)}>")
    return root


def break_seconds(element: Element) -> float:
    """A `break`'s pause: its `time`, else its `strength` (medium when neither is given)."""
    time = element.get("time")
    if time is not None:
        match = _TIME.fullmatch(time)
        if match is None:
            raise _fail(f"break time must look like 500ms or 1.5s, got {time[:40]!r}")
        seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
        if seconds > MAX_BREAK_S:
            raise _fail(f"break time must be at most {MAX_BREAK_S:g}s, got {time[:40]!r}")
        return seconds
    strength = element.get("strength", "medium")
    if strength not in STRENGTHS:
        raise _fail(f"break strength must be one of {', '.join(STRENGTHS)}, got {strength[:40]!r}")
    return STRENGTHS[strength]


def prosody_rate(value: str, current: float) -> float:
    """A `prosody rate` (a name, a percentage of the current rate, or a factor) as a factor."""
    if value in RATES:
        rate = RATES[value]
    else:
        percent = _PERCENT.fullmatch(value)
        try:
            if percent is not None:
                number = float(percent.group(1))
                rate = current * ((100 + number) / 100 if percent.group(1)[0] in "+-" else number / 100)
            else:
                rate = current * float(value)
        except ValueError:
            raise _fail(
                f"prosody rate must be a name, a percentage or a factor, got {value[:40]!r}"
            ) from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise _fail(f"prosody rate must come to between {MIN_RATE:g} and {MAX_RATE:g} times normal")
    return rate


class _Walker:
    def __init__(self, document: str, say_as: SayAs) -> None:
        self.document = document
        self.say_as = say_as
        self.cursor = 0
        self.blocks: list[Block] = []
        self.current: list[Piece] = []
        self.voices: list[str] = []

    def locate(self, text: str, rate: float, voice: str | None) -> None:
        """A text piece at its place in the source (found after the last one)."""
        if not text:
            return
        found = self.document.find(text, self.cursor)
        if found >= 0:
            self.current.append(Piece(text, found, found + len(text), rate=rate, voice=voice))
            self.cursor = found + len(text)
        else:  # the parser rewrote it (an entity): the span from here on
            self.current.append(Piece(text, self.cursor, len(self.document), rate=rate, voice=voice))

    def literal(self, text: str, rate: float, voice: str | None, start: int | None = None) -> None:
        """Words the element stands for, spanning the element's text (from `start`)."""
        first = self.cursor if start is None else start
        self.current.append(Piece(text, first, self.cursor, literal=True, rate=rate, voice=voice))

    def end_block(self) -> None:
        pieces = with_inline_phonemes(self.current)
        if pieces:
            self.blocks.append(tuple(pieces))
        self.current = []

    def walk(self, element: Element, depth: int, rate: float, voice: str | None) -> None:
        if depth > MAX_DEPTH:
            raise _fail(f"elements nest deeper than {MAX_DEPTH} levels")
        tag = _tag(element)
        if tag == "break":
            self.current.append(Piece(pause_s=break_seconds(element), start=self.cursor, end=self.cursor))
            return
        if tag in ("p", "paragraph"):
            self.end_block()
        if tag == "prosody" and element.get("rate") is not None:
            rate = prosody_rate(element.get("rate", ""), rate)
        elif tag == "voice":
            name = element.get("name")
            if not name:
                raise _fail("voice needs a name")
            voice = name
            self.voices.append(name)
        if tag == "sub":
            alias = element.get("alias")
            if alias is None:
                raise _fail("sub needs an alias")
            self.literal(alias, rate, voice, self.skip(element))
            return
        if tag == "phoneme":
            self.phoneme(element, rate, voice)
            return
        if tag == "say-as":
            text = "".join(element.itertext())
            kind = element.get("interpret-as", "")
            spoken = self.say_as(text, kind, element.get("format"))
            if spoken is not None:
                self.literal(spoken, rate, voice, self.skip(element))
                return
        if tag not in ("desc", "metadata", "lexicon"):  # what they hold is about the text, not of it
            self.locate(element.text or "", rate, voice)
            for child in element:
                self.walk(child, depth + 1, rate, voice)
                self.locate(child.tail or "", rate, voice)
        if tag in ("s", "sentence"):
            self.current.append(Piece(start=self.cursor, end=self.cursor, ends_sentence=True))
        if tag in ("p", "paragraph"):
            self.end_block()

    def phoneme(self, element: Element, rate: float, voice: str | None) -> None:
        alphabet = element.get("alphabet", "ipa")
        if alphabet != "ipa":
            raise _fail(f"phoneme alphabet must be ipa, got {alphabet[:40]!r}")
        ph = element.get("ph")
        if not ph:
            raise _fail("phoneme needs a ph attribute")
        start = self.skip(element)
        self.current.append(Piece("", start, self.cursor, phonemes=parse_ipa(ph), rate=rate, voice=voice))

    def skip(self, element: Element) -> int:
        """Move the cursor past an element's own text, which is replaced (sub, phoneme, say-as);
        returns where that text starts."""
        text = "".join(element.itertext())
        start = self.cursor
        if text:
            found = self.document.find(text, self.cursor)
            if found >= 0:
                start, self.cursor = found, found + len(text)
        return start


def parse_ssml(document: str, say_as: SayAs) -> tuple[list[Block], tuple[str, ...]]:
    """The blocks of an SSML document and the voices it switches to."""
    root = parse_xml(document)
    walker = _Walker(document, say_as)
    walker.walk(root, 0, 1.0, None)
    walker.end_block()
    blocks = [block for block in walker.blocks if block]
    return blocks, tuple(dict.fromkeys(walker.voices))
