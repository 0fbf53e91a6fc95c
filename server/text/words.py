"""Written words and their offsets, and how the phoneme words espeak made map back onto them.

A run's written words come from its pieces: each token of the text found, in order, in the
source (so "**bold**" is the word "bold" at the offsets of its letters); a piece the parser
made (say-as, sub, inline code, a placeholder) is one word spanning its element. espeak may say a
written word as several ("$3.50") or merge two ("in the"), so phoneme words are shared out by
each written word's spoken length: exactly when the counts agree, in proportion otherwise.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from typing import Final

from server.text.spans import Piece, Word

_TOKEN: Final = re.compile(r"\S+")


def written_words(piece: Piece, source: str, normalize: Callable[[str], str]) -> list[Word]:
    """The words of one text piece, each with its span in `source`."""
    if piece.literal:
        written = source[piece.start : piece.end].strip() or piece.text.strip()
        spoken = len(piece.text.split())
        return [Word(written, piece.start, piece.end, spoken, piece.text)] if spoken else []
    words: list[Word] = []
    cursor = piece.start
    for match in _TOKEN.finditer(piece.text):
        token = match.group()
        said = normalize(token)
        spoken = max(1, len(said.split()))
        found, written = _find(source, token, cursor, max(piece.end, cursor))
        if found >= 0:
            words.append(Word(written, found, found + len(written), spoken, said))
            cursor = found + len(written)
        else:  # the parser rewrote it (an entity): the piece's span
            words.append(Word(token, piece.start, piece.end, spoken, said))
    return words


def _find(source: str, token: str, start: int, end: int) -> tuple[int, str]:
    """Where the token is written (or, markup around it, its letters): (offset, as written)."""
    found = source.find(token, start, end)
    if found >= 0:
        return found, token
    core = token.strip(string.punctuation)
    if core:
        found = source.find(core, start, end)
        if found >= 0:
            return found, core
    return -1, token


def assign(spoken: Sequence[int], phoneme_words: int) -> list[int]:
    """For each phoneme word, the index of the written word it belongs to (monotonic).

    `spoken` is each written word's expected number of spoken words; where their sum equals
    `phoneme_words` the split is exact, otherwise each phoneme word goes to the written word its
    position falls in, in proportion.
    """
    total = sum(spoken)
    if not spoken or phoneme_words <= 0 or total <= 0:
        return []
    owners: list[int] = []
    bounds: list[float] = []
    running = 0
    for count in spoken:
        running += count
        bounds.append(running * phoneme_words / total)
    index = 0
    for position in range(phoneme_words):
        middle = position + 0.5
        while index < len(bounds) - 1 and middle >= bounds[index]:
            index += 1
        owners.append(index)
    return owners
