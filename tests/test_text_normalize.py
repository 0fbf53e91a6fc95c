"""Spec of English normalization: the table of written forms and the words said for them.

Each row is (written, said, what espeak-ng says without the stage). Rows whose third field is
None are forms espeak already reads right: the stage must leave them exactly as written. The
others were misread (checked with espeak-ng en-us through piper_phonemize) and are rewritten.
"""

from __future__ import annotations

import pytest
from piper_phonemize import phonemize_espeak

from server.text.normalize import normalize_english, normalizer
from server.text.plan import FrontEnd, plan_text
from server.text.spans import TextFormat

TABLE = [
    # currency
    ("It costs $3.50.", "It costs three dollars and fifty cents.", "dollar three point five zero"),
    ("$1 only", "one dollar only", "dollar one only"),
    ("$0.99 each", "ninety-nine cents each", "dollar zero point nine nine each"),
    ("€20", "twenty euros", "euros twenty"),
    ("£5.20", "five pounds and twenty pence", "pound five point two zero"),
    ("$5 million", "five million dollars", "dollar five million"),
    ("$1,250", "one thousand, two hundred and fifty dollars", "dollar one thousand two hundred fifty"),
    ("$10k", "ten thousand dollars", "dollar ten K"),
    ("$100,000", "one hundred thousand dollars", "dollar one hundred thousand"),
    # times
    ("at 9:05", "at nine oh five", "at nine zero five"),
    ("at 5:00 pm", "at five p m", "at five zero zero P M"),
    ("at 12:00", "at twelve o'clock", "at twelve zero zero"),
    ("at 18:00", "at eighteen hundred", "at eighteen zero zero"),
    ("at 10:30", "at 10:30", None),
    ("at 7:45 a.m.", "at 7:45 a.m.", None),
    ("9am", "9am", None),
    ("2:30pm", "2:30pm", None),
    # dates and years
    (
        "on 2024-03-15",
        "on March fifteenth, twenty twenty-four",
        "two thousand twenty four dash zero three dash",
    ),
    ("on March 3, 2024", "on March third, twenty twenty-four", "March three, two thousand twenty four"),
    ("on 3 March 2024", "on the third of March, twenty twenty-four", "three March two thousand twenty four"),
    ("12/25/2024", "December twenty-fifth, twenty twenty-four", "twelve slash twenty five slash"),
    ("Jan 5th", "January fifth", "Jan fifth"),
    ("on Sept. 5", "on September fifth", "Sept. five (a sentence end)"),
    ("in 1999", "in nineteen ninety-nine", "in nineteen hundred ninety nine"),
    ("since 2024", "since twenty twenty-four", "since two thousand twenty four"),
    ("in the 1990s", "in the nineteen nineties", "nineteen hundred ninety z"),
    ("in 2005", "in 2005", None),
    # ordinals and percentages
    ("the 21st time", "the 21st time", None),
    ("the 102nd time", "the 102nd time", None),
    ("the 3rd", "the 3rd", None),
    ("It is 25%.", "It is 25%.", None),
    ("It rose 3.5%.", "It rose 3.5%.", None),
    # units
    ("5 km", "five kilometers", "five K M"),
    ("1 km", "one kilometer", "one K M"),
    ("5 kg", "five kilograms", "five K G"),
    ("1 kg", "one kilogram", "one K G"),
    ("0.5 kg", "zero point five kilograms", "zero point five K G"),
    ("10 MB", "ten megabytes", "ten M B"),
    ("1 MB", "one megabyte", "one M B"),
    ("2 GB", "two gigabytes", "two G B"),
    ("2 TB", "two terabytes", "two T B"),
    ("21°C", "twenty-one degrees Celsius", "twenty one degrees C"),
    ("-3°C", "minus three degrees Celsius", "minus three degrees C"),
    ("70°F", "seventy degrees Fahrenheit", "seventy degrees F"),
    ("60 mph", "sixty miles per hour", "sixty M P H"),
    ("100 km/h", "one hundred kilometers per hour", "one hundred K M slash H"),
    ("100 ms", "one hundred milliseconds", "one hundred M S"),
    ("5 cm", "five centimeters", "five C M"),
    ("5 ft", "five feet", "five F T"),
    ("500 ml", "five hundred milliliters", "five hundred M L"),
    ("100 Mbps", "one hundred megabits per second", "one hundred M B P S"),
    ("5 lbs", "5 lbs", None),
    ("2 oz", "2 oz", None),
    ("3 GHz", "3 GHz", None),
    # ranges
    ("10-20 minutes", "ten to twenty minutes", "ten dash twenty minutes"),
    ("pages 5–10", "pages five to ten", "pages five ten"),
    ("1990-1995", "nineteen ninety to nineteen ninety-five", "nineteen hundred ninety dash"),
    ("call 555-1234", "call 555-1234", None),
    ("COVID-19", "COVID-19", None),
    # fractions
    ("1/2 cup", "one half cup", "one slash two cup"),
    ("3/4 mile", "three quarters mile", "three slash four mile"),
    ("2/3 of them", "two thirds of them", "two slash three of them"),
    ("24/7", "twenty-four seven", "twenty four slash seven"),
    ("½ cup", "½ cup", None),
    # acronyms
    ("HTML and SQL", "HTML and SQL", None),
    ("the FBI", "the FBI", None),
    ("NASA", "NASA", None),
    ("BBC", "BBC", None),
    ("Washington DC", "Washington DC", None),
    # e-mail and URLs
    ("mail jane.doe@example.com", "mail jane.doe@example.com", None),
    (
        "see https://example.com/docs/a-b.",
        "see example dot com slash docs slash a dash b.",
        "H T T P S colon",
    ),
    ("www.example.org", "w w w dot example dot org", "W W W dot example dot org"),
    # Roman numerals
    ("Chapter IV", "Chapter four", "chapter roman four"),
    ("World War II", "World War two", "World War roman two"),
    ("Part I", "Part one", "part I"),
    ("Henry VIII", "Henry the eighth", "Henry roman eight"),
    ("Louis XIV", "Louis the fourteenth", "Louis roman fourteen"),
    ("Elizabeth II", "Elizabeth the second", "Elizabeth roman two"),
    ("Then I left", "Then I left", None),
    ("Windows XP", "Windows XP", None),
    # abbreviations and symbols
    ("vs. them", "versus them", "V S them"),
    ("approx. 5", "approximately 5", "approx. five (a sentence end)"),
    ("Prof. Lee", "Professor Lee", "prof. Lee (a sentence end)"),
    ("Jr.", "Junior", "J R"),
    ("i.e. that", "that is that", "I E that"),
    ("Mt. Everest", "Mount Everest", "M T. Everest"),
    ("No. 5", "number five", "no. five"),
    ("#1 fan", "number one fan", "hash one fan"),
    ("3x faster", "three times faster", "three X faster"),
    ("Dr. Smith", "Dr. Smith", None),
    ("Mrs. Smith", "Mrs. Smith", None),
    ("e.g. this", "e.g. this", None),
    ("etc. and", "etc. and", None),
    ("Tom & Jerry", "Tom & Jerry", None),
    ("1,234,567 people", "1,234,567 people", None),
]


def test_the_table_has_at_least_sixty_cases_and_fixes_most():
    assert len(TABLE) >= 60
    assert sum(espeak is not None for _, _, espeak in TABLE) >= 50


@pytest.mark.parametrize(("written", "said", "espeak"), TABLE, ids=[row[0] for row in TABLE])
def test_normalization_says_each_written_form_as_the_table_says(written, said, espeak):
    assert normalize_english(written) == said


@pytest.mark.parametrize(
    ("written", "said"),
    [(written, said) for written, said, espeak in TABLE if espeak is not None],
    ids=[row[0] for row in TABLE if row[2] is not None],
)
def test_every_rewrite_changes_what_espeak_says(written, said):
    def phonemes(text: str) -> list[list[str]]:
        return phonemize_espeak(text, "en-us")

    assert phonemes(said) != phonemes(written)


def test_only_languages_with_rules_are_normalized():
    assert normalizer("en") is normalize_english
    assert normalizer("de") is None
    plan = plan_text("Es sind 5 km.", TextFormat.PLAIN, "de", FrontEnd())
    assert [s.text for s in plan.segments] == ["Es sind 5 km."]


def test_normalization_can_be_turned_off():
    plan = plan_text("It is 5 km.", TextFormat.PLAIN, "en-us", FrontEnd(normalize=False))
    assert [s.text for s in plan.segments] == ["It is 5 km."]


def test_the_front_end_normalizes_english_sentences():
    plan = plan_text("Dr. Smith ran 5 km. It cost $3.50!", TextFormat.PLAIN, "en-us", FrontEnd())
    assert [s.text for s in plan.segments] == [
        "Dr. Smith ran five kilometers.",
        "It cost three dollars and fifty cents!",
    ]
