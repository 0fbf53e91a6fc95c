"""Where streamed text (a language model's output, piece by piece) has complete sentences.

One small function on purpose: a real text front-end can replace it without the Wyoming handler
changing. A sentence ends at `.`, `!`, `?` or `…` (closing quotes and brackets may follow) once
whitespace and the start of a next sentence have arrived (not a lower-case letter, so "e.g. this"
stays one sentence), or at a blank line. The rest may still grow.
"""

from __future__ import annotations

import re
from typing import Final

_END: Final = re.compile(r"""[.!?…]+["'”’)\]]*(?=\s+(?![a-z])\S)|\n\s*\n""")


def split_sentences(text: str) -> tuple[list[str], str]:
    """The complete sentences in `text` and the unfinished rest (leading space dropped)."""
    sentences: list[str] = []
    start = 0
    for end in _END.finditer(text):
        sentence = text[start : end.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = end.end()
    return sentences, text[start:].lstrip()
