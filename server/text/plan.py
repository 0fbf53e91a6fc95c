"""The front-end's one entry point: a document in a format to the `TextPlan` the speech service says.

text -> blocks with source offsets (plain, `markdown`, `ssml`) -> inline phonemes split out ->
sentences (`sentences`) -> words normalized for the language (`normalize`) -> segments. Pure and
blocking (pysbd takes about 15 ms per 1,000 characters): the speech service runs it in its text
thread, never on the IOLoop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.text.markdown import MarkdownRules, parse_markdown
from server.text.normalize import normalizer
from server.text.phonemes import with_inline_phonemes
from server.text.sayas import say_as
from server.text.sentences import Pauses, segment
from server.text.spans import Block, Piece, TextFormat, TextPlan
from server.text.ssml import parse_ssml


@dataclass(frozen=True)
class FrontEnd:
    """The settings that shape a plan (all part of the cache key)."""

    pauses: Pauses = field(default_factory=Pauses)
    markdown: MarkdownRules = field(default_factory=MarkdownRules)
    normalize: bool = True

    def key(self) -> tuple[object, ...]:
        return (
            self.pauses.sentence_s,
            self.pauses.paragraph_s,
            self.markdown.code_text,
            self.markdown.table_text,
            self.normalize,
        )


def segment_language(espeak_voice: str) -> str:
    """The language the segmenter and normalizer use: `en-us` and `en-gb-x-rp` are `en`."""
    return espeak_voice.replace("_", "-").split("-")[0].lower()


def plan_text(document: str, text_format: TextFormat, espeak_voice: str, front: FrontEnd) -> TextPlan:
    """The segments to say for a document; a malformed one raises `InvalidRequest`."""
    language = segment_language(espeak_voice)
    voices: tuple[str, ...] = ()
    blocks: list[Block]
    if text_format is TextFormat.SSML:
        blocks, voices = parse_ssml(document, lambda text, kind, fmt: say_as(text, kind, fmt, language))
    elif text_format is TextFormat.MARKDOWN:
        blocks = parse_markdown(document, front.markdown)
    else:
        blocks = [tuple(with_inline_phonemes([Piece(document, 0, len(document))]))]
    normalize = normalizer(language) if front.normalize else None
    segments = segment(blocks, language, front.pauses, normalize or str, document)
    return TextPlan(tuple(segments), voices)
