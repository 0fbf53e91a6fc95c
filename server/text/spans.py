"""The values the front-end passes along, each carrying where in the caller's text it came from.

A format parser (plain, markdown, SSML) turns a document into blocks of `Piece`s; the segmenter
turns blocks into `Segment`s (one utterance each, then a pause); the speech service phonemizes
each segment's `Run`s. Offsets are Unicode code points into the document as the parser got it,
end exclusive, so word timings can point back at the words as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class TextFormat(StrEnum):
    """How the text field is read."""

    PLAIN = "plain"
    MARKDOWN = "markdown"
    SSML = "ssml"


@dataclass(frozen=True)
class Piece:
    """One stretch of a block: words, inline phonemes, or a pause (a break)."""

    text: str = ""
    start: int = 0
    end: int = 0
    phonemes: tuple[str, ...] = ()  # said as given, never phonemized
    pause_s: float | None = None  # a break: this much silence here
    literal: bool = False  # words the parser made (say-as, sub, placeholders): not normalized again
    rate: float = 1.0  # speaking rate (SSML prosody): 2 is twice as fast
    voice: str | None = None  # another voice for this stretch (SSML voice); None: the request's
    ends_sentence: bool = False  # a sentence ends here whatever the punctuation says (SSML `s`)

    @property
    def is_break(self) -> bool:
        return self.pause_s is not None or self.ends_sentence


Block = tuple[Piece, ...]  # a paragraph, heading or list item: a longer pause follows it


@dataclass(frozen=True)
class Word:
    """A word as written, where it is in the source, and how many words it is said as."""

    text: str
    start: int
    end: int
    spoken: int = 1  # "$3.50" is said as five words; word timings share time out by this
    said: str = ""  # the words it is said as (after normalization)


@dataclass(frozen=True)
class Run:
    """Words said together (text to phonemize) or given phonemes, with their source span."""

    text: str
    start: int
    end: int
    phonemes: tuple[str, ...] = ()
    words: tuple[Word, ...] = ()  # the written words it says, in order (markup is never one)


@dataclass(frozen=True)
class Segment:
    """One utterance: its runs, in order, then `pause_s` of silence (none after the last)."""

    runs: tuple[Run, ...]
    pause_s: float
    rate: float = 1.0
    voice: str | None = None

    @property
    def text(self) -> str:
        return " ".join(run.text if not run.phonemes else "".join(run.phonemes) for run in self.runs)


@dataclass(frozen=True)
class TextPlan:
    """A whole document as segments; `voices` names every voice besides the request's it uses."""

    segments: tuple[Segment, ...]
    voices: tuple[str, ...] = field(default=())

    @property
    def spoken(self) -> str:
        return " ".join(segment.text for segment in self.segments if segment.runs)
