"""Unicode clean-up: what "the same text" means for the cache key and the length limit.

`normalize_text` is the plain-text form (whitespace collapsed); `clean_document` keeps line breaks
and indentation, which markdown and SSML documents need to be read as written.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

_WHITESPACE: Final = re.compile(r"\s+")
_KEPT_CONTROLS: Final = frozenset("\n\t")


def _drop(char: str) -> bool:
    category = unicodedata.category(char)
    # Controls, lone surrogates, private use, unassigned and bidi/format marks carry no speech;
    # dropping them keeps keys stable (ZWJ stays: it is part of emoji sequences).
    return category in ("Cc", "Cs", "Co", "Cn") or (category == "Cf" and char != "\u200d")


def normalize_text(text: str) -> str:
    """NFC, control and format characters removed, whitespace collapsed and stripped."""
    if text.isascii() and text.isprintable():
        # The common case, and on every cache hit: printable ASCII is already NFC and has no
        # control or format characters, so only spaces can change (a profiled hit-path cost).
        return _WHITESPACE.sub(" ", text).strip()
    text = unicodedata.normalize("NFC", text)
    kept = [" " if char.isspace() else char for char in text if char.isspace() or not _drop(char)]
    # Compose again: a removed character may have separated a letter from its combining mark.
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", "".join(kept))).strip()


def clean_document(text: str) -> str:
    """NFC with control and format characters removed, but line breaks and tabs kept (markup needs them)."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    kept = [char for char in text if char in _KEPT_CONTROLS or not _drop(char)]
    return unicodedata.normalize("NFC", "".join(kept)).strip()
