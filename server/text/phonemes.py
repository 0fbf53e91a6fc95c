"""Inline phonemes, Piper's syntax: `[[ h ə l ˈoʊ ]]` is said as those IPA phonemes.

Inside the brackets, whitespace only separates phonemes for readability; every code point is one
phoneme, as in Piper's `phoneme_id_map`. Which phonemes a voice knows is checked by the speech
service, which has the voice.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Final

from server.text.spans import Piece

INLINE: Final = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)


def parse_ipa(text: str) -> tuple[str, ...]:
    """IPA as phonemes: one a code point, whitespace dropped."""
    return tuple(char for char in text if not char.isspace())


def split_inline(piece: Piece) -> list[Piece]:
    """A text piece with its `[[ ... ]]` blocks as phoneme pieces; other pieces as they are."""
    if piece.is_break or piece.phonemes or "[[" not in piece.text:
        return [piece]
    found: list[Piece] = []
    cursor = 0

    def at(start: int, end: int) -> dict[str, int]:
        # Offsets map one to one only when the text is the source's own; otherwise each part
        # keeps the whole piece's span.
        if piece.end - piece.start != len(piece.text):
            return {"start": piece.start, "end": piece.end}
        return {"start": piece.start + start, "end": piece.start + end}

    for match in INLINE.finditer(piece.text):
        if match.start() > cursor:
            found.append(replace(piece, text=piece.text[cursor : match.start()], **at(cursor, match.start())))
        phonemes = parse_ipa(match.group(1))
        if phonemes:
            found.append(replace(piece, text="", phonemes=phonemes, **at(*match.span())))
        cursor = match.end()
    if cursor < len(piece.text):
        found.append(replace(piece, text=piece.text[cursor:], **at(cursor, len(piece.text))))
    return found


def with_inline_phonemes(pieces: list[Piece]) -> list[Piece]:
    """Adjacent text pieces said alike joined (a parser may cut `[[` apart), then split at `[[ ]]`."""
    joined: list[Piece] = []
    for piece in pieces:
        last = joined[-1] if joined else None
        if (
            last is not None
            and not (piece.is_break or piece.phonemes or piece.literal)
            and not (last.is_break or last.phonemes or last.literal)
            and (last.voice, last.rate) == (piece.voice, piece.rate)
        ):
            joined[-1] = replace(last, text=last.text + piece.text, end=piece.end)
        else:
            joined.append(piece)
    return [part for piece in joined for part in split_inline(piece)]
