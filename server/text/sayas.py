"""SSML `say-as`: characters, cardinal, ordinal, digits, date, time and telephone as words.

Number words come from num2words in the voice's language; a language num2words lacks, or text
that is not what `interpret-as` says, is read as written (None), never an error: the words are
still there to be read.
"""

from __future__ import annotations

import re
from typing import Final

from num2words import CONVERTER_CLASSES, num2words

_DIGITS: Final = re.compile(r"\d")
_NUMBER: Final = re.compile(r"[+-]?\d+(?:[.,]\d+)?")
_TIME: Final = re.compile(r"(\d{1,2})[:.](\d{2})(?:[:.](\d{2}))?\s*([ap]\.?m\.?)?", re.IGNORECASE)
_DATE_PARTS: Final = re.compile(r"\d+")
MONTHS: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def number_language(language: str) -> str | None:
    """The num2words language for a voice's language code (`en-us`, `en_US`, `de`), or None."""
    code = language.replace("-", "_")
    for candidate in (code, code.split("_")[0].lower()):
        if candidate in CONVERTER_CLASSES:
            return candidate
    return None


def words(number: int | float, language: str, to: str = "cardinal") -> str:
    return str(num2words(number, lang=language, to=to))


def characters(text: str) -> str:
    """Spelled out: each letter or digit on its own (espeak says a lone letter's name)."""
    return " ".join(char for char in text if not char.isspace())


def digits(text: str, language: str) -> str:
    return " ".join(words(int(char), language) for char in text if char.isdigit())


def year(value: int, language: str) -> str:
    return words(value, language, "year") if language.startswith("en") else words(value, language)


def date(text: str, fmt: str | None, language: str) -> str | None:
    """A numeric date in `format` order (ymd, mdy, dmy, ym, md, ...; default ymd) as words."""
    parts = [int(part) for part in _DATE_PARTS.findall(text)]
    order = (fmt or "ymd").lower()
    if len(parts) != len(order) or not set(order) <= set("ymd"):
        return None
    fields = dict(zip(order, parts, strict=True))
    month, day = fields.get("m"), fields.get("d")
    if (month is not None and not 1 <= month <= 12) or (day is not None and not 1 <= day <= 31):
        return None
    if not language.startswith("en"):
        return " ".join(words(part, language) for part in parts)
    spoken = []
    if month is not None:
        spoken.append(MONTHS[month - 1])
    if day is not None:
        spoken.append(words(day, language, "ordinal"))
    if "y" in fields:
        if spoken:
            spoken[-1] += ","
        spoken.append(year(fields["y"], language))
    return " ".join(spoken)


def clock(text: str, language: str) -> str | None:
    """A time of day: 10:30 is "ten thirty", 9:05 "nine oh five", 14:00 "fourteen hundred"."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        return None
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours > 24 or minutes > 59:
        return None
    if not language.startswith("en"):
        return f"{words(hours, language)} {words(minutes, language)}"
    spoken = [words(hours, language)]
    if minutes == 0:
        spoken.append("o'clock" if match.group(4) or hours <= 12 else "hundred")
    elif minutes < 10:
        spoken.append(f"oh {words(minutes, language)}")
    else:
        spoken.append(words(minutes, language))
    if match.group(4):
        spoken = spoken[:1] if minutes == 0 else spoken
        spoken.append(" ".join(match.group(4).lower().replace(".", "")))
    return " ".join(spoken)


def telephone(text: str, language: str) -> str | None:
    """Digit by digit, a pause (a comma) between the groups as written."""
    groups = [group for group in re.split(r"[^\d+]+", text) if group]
    if not groups or not _DIGITS.search(text):
        return None
    spoken = []
    for group in groups:
        plus = "plus " if group.startswith("+") else ""
        spoken.append(plus + digits(group, language))
    return ", ".join(spoken)


def say_as(text: str, interpret_as: str, fmt: str | None, language: str) -> str | None:
    """The words for `<say-as interpret-as=...>`; None: read the text as it is."""
    kind = interpret_as.lower()
    if kind in ("characters", "spell-out", "letters"):
        return characters(text)
    numbers = number_language(language)
    if numbers is None:
        return None
    stripped = text.strip().replace(",", "") if numbers.startswith("en") else text.strip()
    if kind in ("cardinal", "number") and _NUMBER.fullmatch(stripped):
        value = float(stripped.replace(",", ".")) if "." in stripped or "," in stripped else int(stripped)
        return words(value, numbers)
    if kind == "ordinal" and stripped.rstrip(".").isdigit():
        return words(int(stripped.rstrip(".")), numbers, "ordinal")
    if kind == "digits" and _DIGITS.search(stripped):
        return digits(stripped, numbers)
    if kind == "date":
        return date(stripped, fmt, numbers)
    if kind == "time":
        return clock(stripped, numbers)
    if kind == "telephone":
        return telephone(stripped, numbers)
    return None
