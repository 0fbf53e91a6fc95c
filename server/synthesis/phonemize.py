"""Text to sentences of phonemes with espeak-ng (through `piper_phonemize`).

Kept apart from the engine so that `voice`, the scheduler and batching import and run from
phoneme ids alone: the GPU check machine, for one, has no `piper_phonemize` wheel.
"""

from __future__ import annotations

import re
import threading
from typing import Final

from piper_phonemize import phonemize_codepoints, phonemize_espeak

PHONEMIZE_PIECE_CHARS: Final = 400
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")

# espeak-ng keeps global state and is not thread-safe; every phonemize call goes through this.
_ESPEAK_LOCK: Final = threading.Lock()


def phonemize(text: str, phoneme_type: str, espeak_voice: str) -> list[list[str]]:
    """Sentences of phonemes (espeak splits sentences; codepoint voices get one sentence)."""
    if phoneme_type == "text":
        with _ESPEAK_LOCK:
            return phonemize_codepoints(text)
    sentences: list[list[str]] = []
    # A call takes about 5 ms per 1,000 characters under the espeak lock (piper-phonemize lets
    # go of the GIL meanwhile, so only other phonemizing waits): pieces of a few sentences let a
    # new stream's first sentence in between the pieces of a job's long document.
    for piece in _pieces(text, PHONEMIZE_PIECE_CHARS):
        with _ESPEAK_LOCK:
            sentences.extend(s for s in phonemize_espeak(piece, espeak_voice) if s)
    return sentences or [[]]


def _pieces(text: str, limit: int) -> list[str]:
    """Split at sentence ends into pieces of about `limit` characters (never inside a sentence)."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        if current and len(current) + len(sentence) > limit:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return pieces
