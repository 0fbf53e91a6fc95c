"""Captions from word timings: WebVTT (webvtt-py) and SubRip (srt), cues of a few words each.

A cue ends at a sentence end, after `MAX_CUE_WORDS` words or `MAX_CUE_S` seconds, whichever
comes first, so captions read at the pace of the speech.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Final

import srt
import webvtt

MAX_CUE_WORDS: Final = 7
MAX_CUE_S: Final = 3.5
_SENTENCE_END: Final = (".", "!", "?", "…", ":", ";")

Cue = tuple[float, float, str]


def cues(words: Sequence[Mapping[str, Any]]) -> list[Cue]:
    """(start_s, end_s, text) for each group of words."""
    grouped: list[Cue] = []
    current: list[Mapping[str, Any]] = []

    def close() -> None:
        if current:
            text = " ".join(str(word["word"]) for word in current)
            grouped.append((float(current[0]["start_s"]), float(current[-1]["end_s"]), text))
            current.clear()

    for word in words:
        if current and float(word["end_s"]) - float(current[0]["start_s"]) > MAX_CUE_S:
            close()
        current.append(word)
        if len(current) >= MAX_CUE_WORDS or str(word["word"]).endswith(_SENTENCE_END):
            close()
    close()
    return grouped


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def to_vtt(words: Sequence[Mapping[str, Any]]) -> str:
    document = webvtt.WebVTT()
    for start, end, text in cues(words):
        document.captions.append(webvtt.Caption(start=_vtt_time(start), end=_vtt_time(end), text=text))
    return document.content


def to_srt(words: Sequence[Mapping[str, Any]]) -> str:
    subtitles = [
        srt.Subtitle(index, datetime.timedelta(seconds=start), datetime.timedelta(seconds=end), text)
        for index, (start, end, text) in enumerate(cues(words), 1)
    ]
    return srt.compose(subtitles)
