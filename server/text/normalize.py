"""Language-aware normalization: written forms espeak misreads, rewritten as the words to say.

Applied only for the languages it knows (English today; the voice's espeak language decides), to
the text of each sentence after segmentation. Every rule is in the spec table of
tests/test_text_normalize.py, which also lists what espeak already reads right and is left alone
(ordinals, percentages, most acronyms, "e.g.", "Dr."). Number words come from num2words. Bump
`NORMALIZATION_VERSION` whenever a rule changes what is said: it is part of the cache key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Final

from server.text.sayas import MONTHS, words

NORMALIZATION_VERSION: Final = 1
EN: Final = "en"

_MONTH_NAMES: Final = {name.lower(): index for index, name in enumerate(MONTHS, 1)} | {
    name[:3].lower(): index for index, name in enumerate(MONTHS, 1)
}
_MONTH: Final = (
    r"(January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?"
)
_YEAR_WORDS: Final = r"(?:in|since|by|from|until|till|of|year|circa|around|before|after|during)"
_CURRENCIES: Final = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "¥": ("yen", "yen", "", ""),
}
_SCALES: Final = {"k": "thousand", "m": "million", "bn": "billion", "b": "billion"}
# (singular, plural) for units espeak spells out letter by letter ("five K M").
_UNITS: Final = {
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "km": ("kilometer", "kilometers"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "kg": ("kilogram", "kilograms"),
    "mg": ("milligram", "milligrams"),
    "ml": ("milliliter", "milliliters"),
    "mi": ("mile", "miles"),
    "ft": ("foot", "feet"),
    "mph": ("mile per hour", "miles per hour"),
    "ms": ("millisecond", "milliseconds"),
    "min": ("minute", "minutes"),
    "KB": ("kilobyte", "kilobytes"),
    "kB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"),
    "GB": ("gigabyte", "gigabytes"),
    "TB": ("terabyte", "terabytes"),
    "Mbps": ("megabit per second", "megabits per second"),
    "Gbps": ("gigabit per second", "gigabits per second"),
    "kWh": ("kilowatt hour", "kilowatt hours"),
    "kW": ("kilowatt", "kilowatts"),
    "Hz": ("hertz", "hertz"),
    "°C": ("degree Celsius", "degrees Celsius"),
    "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
}
_DENOMINATORS: Final = {2: ("half", "halves"), 4: ("quarter", "quarters")}
_ABBREVIATIONS: Final = {
    "vs.": "versus",
    "approx.": "approximately",
    "Prof.": "Professor",
    "Jr.": "Junior",
    "Sr.": "Senior",
    "i.e.": "that is",
    "Mt.": "Mount",
    "Fig.": "Figure",
    "Apt.": "Apartment",
}
# Words after which a Roman numeral is a number ("Chapter IV"), not a regnal ordinal.
_NUMBERED: Final = "|".join(
    [
        *("Chapter", "Part", "Volume", r"Vol\.", "Book", "Act", "Scene", "War", "Phase", "Season"),
        *("Episode", "Level", "Type", "Class", "Article", "Section", "Stage"),
    ]
)
# I to XXXIX only: with L, C, D and M far more capitals are not numerals ("DC", "CD", "MD").
_ROMAN: Final = r"(?=[XVI]{1,7}\b)X{0,3}(?:IX|IV|V?I{0,3})"
_ROMAN_VALUES: Final = {"X": 10, "V": 5, "I": 1}

_NUMBER: Final = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"


def _number(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def _say(number: Decimal) -> str:
    value: int | float = int(number) if number == number.to_integral_value() else float(number)
    return words(value, EN)


def _plural(number: Decimal, forms: tuple[str, str]) -> str:
    return forms[0] if number == 1 else forms[1]


def _year(value: int) -> str:
    return words(value, EN, "year")


def _currency(match: re.Match[str]) -> str:
    symbol, amount, scale = match.group(1), _number(match.group(2)), (match.group(3) or "").strip()
    unit, units, cent, cents = _CURRENCIES[symbol]
    if scale:
        scale_word = _SCALES.get(scale.lower(), scale.lower())
        return f"{_say(amount)} {scale_word} {units}"
    whole = int(amount)
    fraction = int((amount - whole) * 100) if cent else 0
    parts = []
    if whole or not fraction:
        parts.append(f"{words(whole, EN)} {unit if whole == 1 else units}")
    if fraction:
        parts.append(f"{words(fraction, EN)} {cent if fraction == 1 else cents}")
    return " and ".join(parts)


def _iso_date(match: re.Match[str]) -> str:
    year, month, day = (int(part) for part in match.groups())
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        return match.group(0)
    return f"{MONTHS[month - 1]} {words(day, EN, 'ordinal')}, {_year(year)}"


def _slash_date(match: re.Match[str]) -> str:
    month, day, year = (int(part) for part in match.groups())
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        return match.group(0)
    return f"{MONTHS[month - 1]} {words(day, EN, 'ordinal')}, {_year(year)}"


def _month_day(match: re.Match[str]) -> str:
    month = MONTHS[
        _MONTH_NAMES[match.group(1).lower()[:3] if match.group(1).lower() != "sept" else "sep"] - 1
    ]
    day = int(match.group(2))
    spoken = f"{month} {words(day, EN, 'ordinal')}"
    if match.group(3):
        spoken += f", {_year(int(match.group(3)))}"
    return spoken


def _day_month(match: re.Match[str]) -> str:
    day = int(match.group(1))
    month = MONTHS[
        _MONTH_NAMES[match.group(2).lower()[:3] if match.group(2).lower() != "sept" else "sep"] - 1
    ]
    spoken = f"the {words(day, EN, 'ordinal')} of {month}"
    if match.group(3):
        spoken += f", {_year(int(match.group(3)))}"
    return spoken


def _range(match: re.Match[str]) -> str:
    first, second = match.group(1), match.group(2)
    if len(first) == 4 and len(second) == 4:  # 1990-1995: years
        return f"{_year(int(first))} to {_year(int(second))}"
    if len(first) == 4 or len(second) == 4:  # 555-1234: a phone number, not a range
        return match.group(0)
    return f"{_say(_number(first))} to {_say(_number(second))}"


def _decade(match: re.Match[str]) -> str:
    spoken = _year(int(match.group(1)))
    return spoken[:-1] + "ies" if spoken.endswith("y") else spoken + "s"


def _fraction(match: re.Match[str]) -> str:
    numerator, denominator = int(match.group(1)), int(match.group(2))
    if not 0 < numerator < denominator <= 10:
        return match.group(0)
    forms = _DENOMINATORS.get(denominator)
    if forms is None:
        ordinal = words(denominator, EN, "ordinal")
        forms = (ordinal, ordinal + "s")
    return f"{words(numerator, EN)} {forms[0] if numerator == 1 else forms[1]}"


def _unit(match: re.Match[str]) -> str:
    amount = _number(match.group(1))
    return f"{_say(amount)} {_plural(amount, _UNITS[match.group(2)])}"


def _roman(text: str) -> int:
    total = 0
    for char, following in zip(text, [*text[1:], ""], strict=True):
        value = _ROMAN_VALUES[char]
        total += -value if following and _ROMAN_VALUES[following] > value else value
    return total


def _numbered(match: re.Match[str]) -> str:
    return f"{match.group(1)} {words(_roman(match.group(2)), EN)}"


def _regnal(match: re.Match[str]) -> str:
    return f"{match.group(1)} the {words(_roman(match.group(2)), EN, 'ordinal')}"


def _spoken_address(text: str) -> str:
    """A URL or host as said aloud: dot, slash, dash; the scheme left out."""
    text = re.sub(r"^https?://", "", text)
    text = re.sub(r"^www\.", "w w w.", text)
    for mark, word in ((".", " dot "), ("/", " slash "), ("-", " dash "), ("_", " underscore ")):
        text = text.replace(mark, word)
    return re.sub(r"\s+", " ", text).strip()


def _url(match: re.Match[str]) -> str:
    return _spoken_address(match.group(1)) + match.group(2)


Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str] | str]

RULES: Final[tuple[Rule, ...]] = (
    (re.compile(r"\b((?:https?://|www\.)[^\s]+?)([.,;:!?)]*(?:\s|$))"), _url),
    (
        re.compile(rf"([$€£¥])({_NUMBER})(\s?(?:k|bn|[mb]\b|thousand|million|billion|trillion)\b)?", re.I),
        _currency,
    ),
    (re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b"), _iso_date),
    (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"), _slash_date),
    (re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}})\b)?"), _month_day),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH}(?:,?\s+(\d{{4}})\b)?"), _day_month),
    (re.compile(r"\b(\d{1,2}):(0\d)(?:\s?([ap])\.?m\.?\b)?", re.I), lambda m: _clock(m)),
    (re.compile(r"\b24/7\b"), "twenty-four seven"),
    (re.compile(r"\b(\d{1,4})\s?[–—]\s?(\d{1,4})\b"), _range),
    (re.compile(r"(?<![\d-])\b(\d{1,3}|1\d{3}|20\d{2})-(\d{1,3}|1\d{3}|20\d{2})\b(?![\d-])"), _range),
    (re.compile(r"\b(1[1-9]\d0|20[0-9]0)s\b"), _decade),
    (
        re.compile(rf"\b({_YEAR_WORDS})\s+(1[1-9]\d\d|20[1-9]\d)\b", re.I),
        lambda m: f"{m.group(1)} {_year(int(m.group(2)))}",
    ),
    (re.compile(r"(?<![\d/])\b(\d{1,2})/(\d{1,2})\b(?![\d/])"), _fraction),
    (re.compile(rf"(?<![\w.])(-?{_NUMBER})\s?({'|'.join(re.escape(u) for u in _UNITS)})(?![\w/])"), _unit),
    (re.compile(rf"\b({_NUMBERED})\s+({_ROMAN})\b"), _numbered),
    (re.compile(rf"\b([A-Z][a-z]+)\s+((?!I\b){_ROMAN})\b"), _regnal),
    (re.compile(r"#(\d+)\b"), lambda m: f"number {words(int(m.group(1)), EN)}"),
    (re.compile(r"\bNo\.\s?(\d+)\b"), lambda m: f"number {words(int(m.group(1)), EN)}"),
    (re.compile(r"\b(\d+)x\b"), lambda m: f"{words(int(m.group(1)), EN)} times"),
    *((re.compile(rf"(?<![\w.]){re.escape(short)}(?!\w)"), long) for short, long in _ABBREVIATIONS.items()),
)


def _clock(match: re.Match[str]) -> str:
    """Times espeak reads as "nine zero five": on the hour and the first ten minutes."""
    suffix = match.group(3)
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours > 24:
        return match.group(0)
    spoken = words(hours, EN)
    if minutes:
        spoken += f" oh {words(minutes, EN)}"
    elif not suffix:
        spoken += " o'clock" if hours <= 12 else " hundred"
    return spoken + (f" {suffix.lower()} m" if suffix else "")


def normalize_english(text: str) -> str:
    """English text with the forms espeak misreads rewritten as words."""
    for pattern, replacement in RULES:
        text = pattern.sub(replacement, text)
    return text


def normalizer(language: str) -> Callable[[str], str] | None:
    """The normalization for a language (`en`), or None where there is none."""
    if language.lower().startswith(EN):
        return normalize_english
    return None
