"""Where streamed text (a language model's output, piece by piece) has complete sentences.

The sentences are the text front-end's own (`server.text.sentences.sentence_spans`, pysbd for the
voice's language), so a streamed sentence ends where `/tts` would end it: "Dr. Smith", "e.g. this"
and "3.14" stay whole. A sentence is complete once the next one has started (the segmenter found
another sentence after it); the last one may still grow, so it stays buffered until more text
or the end of the stream arrives.
"""

from __future__ import annotations

import re
from typing import Final

from server.text.plan import segment_language
from server.text.sentences import sentence_spans

# Without one of these nothing can have ended: skip the segmenter (it runs on the IOLoop, for
# every streamed piece) until one arrives.
_MAY_END: Final = re.compile(r"[.!?…。！？\n]")


def split_sentences(text: str, espeak_voice: str) -> tuple[list[str], str]:
    """The complete sentences in `text` and the unfinished rest (leading space dropped)."""
    if not _MAY_END.search(text):
        return [], text.lstrip()
    spans = sentence_spans(text, segment_language(espeak_voice))
    if not spans:
        return [], text.lstrip()
    sentences = [text[start:end].strip() for start, end in spans[:-1]]
    return [sentence for sentence in sentences if sentence], text[spans[-1][0] :].lstrip()
