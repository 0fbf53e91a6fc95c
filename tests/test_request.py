"""Spec of request parsing: every rule about text, speed and voice lives in `parse_speech_request`."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest, TextTooLong
from server.request import SpeechRequest, parse_speech_request, parse_speed

DEFAULT_VOICE = "en_US-joe-medium"


def parse(max_chars: int = 5000, **fields: object) -> SpeechRequest:
    return parse_speech_request(fields, default_voice=DEFAULT_VOICE, max_chars=max_chars)


@pytest.mark.parametrize(
    ("preset", "length_scale"),
    [("very_slow", 1.5), ("slow", 1.2), ("normal", 1.0), ("fast", 0.6), ("very_fast", 0.4)],
)
def test_speed_preset_maps_to_its_length_scale(preset, length_scale):
    request = parse(text="Hello.", speed=preset)
    assert request.length_scale == length_scale
    assert request.speed == preset


def test_speed_preset_is_case_and_space_insensitive():
    assert parse_speed(" Very_Fast ") == ("very_fast", 0.4)


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_speed_is_normal(missing):
    request = parse(text="Hello.", speed=missing)
    assert (request.speed, request.length_scale) == ("normal", 1.0)


def test_absent_speed_is_normal():
    request = parse(text="Hello.")
    assert (request.speed, request.length_scale) == ("normal", 1.0)


@pytest.mark.parametrize(
    ("speed", "rate"),
    [(0.25, 0.25), (0.5, 0.5), (1, 1.0), (2.0, 2.0), (4.0, 4.0), ("0.25", 0.25), ("1.6", 1.6), ("4", 4.0)],
)
def test_numeric_speed_is_a_rate_whose_length_scale_is_its_inverse(speed, rate):
    request = parse(text="Hello.", speed=speed)
    assert request.speed == rate
    assert request.length_scale == pytest.approx(1.0 / rate, rel=1e-12)


@pytest.mark.parametrize("speed", [0.2, 4.1, "0.2", "4.1", 0, -1, "nan", "inf", "-inf", "abc", True, False])
def test_speed_outside_range_or_not_a_number_is_invalid(speed):
    with pytest.raises(InvalidRequest) as caught:
        parse(text="Hello.", speed=speed)
    assert caught.value.status == 400
    assert "speed" in caught.value.message


def test_speed_of_wrong_type_is_invalid():
    with pytest.raises(InvalidRequest):
        parse(text="Hello.", speed=[1.0])


def test_out_of_range_speed_message_names_the_range_and_value():
    with pytest.raises(InvalidRequest) as caught:
        parse(text="Hello.", speed=4.1)
    assert caught.value.message == "speed must be from 0.25 to 4.0, got 4.1"


def test_text_is_required():
    with pytest.raises(InvalidRequest) as caught:
        parse()
    assert caught.value.message == "text is required"


def test_text_must_be_a_string():
    with pytest.raises(InvalidRequest) as caught:
        parse(text=123)
    assert caught.value.message == "text must be a string"


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "\x00\x07", "\u200b\u200e\ufeff", " \x1b "])
def test_text_empty_after_normalization_is_invalid(text):
    with pytest.raises(InvalidRequest) as caught:
        parse(text=text)
    assert caught.value.message == "text is empty"


def test_text_at_the_limit_is_accepted():
    assert parse(max_chars=10, text="a" * 10).text == "a" * 10


def test_text_over_the_limit_is_too_long_413():
    with pytest.raises(TextTooLong) as caught:
        parse(max_chars=10, text="a" * 11)
    assert caught.value.status == 413
    assert caught.value.message == "text is 11 characters; the limit is 10"


def test_limit_counts_characters_after_normalization():
    assert parse(max_chars=5, text="  a    b   c  ").text == "a b c"


def test_huge_text_is_refused_before_normalizing():
    with pytest.raises(TextTooLong) as caught:
        parse(max_chars=10, text=" " * 41)
    assert caught.value.message == "text is longer than 10 characters"


def test_control_characters_are_removed_from_text():
    assert parse(text="Hello\x07 \x00wor\x1bld\u200e.").text == "Hello world."


def test_text_is_normalized_nfc_and_whitespace_collapsed():
    assert parse(text="  Cafe\u0301 \n\n au   lait  ").text == "Café au lait"


def test_unknown_field_is_invalid_and_named():
    with pytest.raises(InvalidRequest) as caught:
        parse(text="Hello.", pitch="high")
    assert caught.value.message == "unknown field: pitch"


def test_format_field_is_known():
    assert parse(text="Hello.", format="wav").text == "Hello."


def test_default_voice_is_used_when_none_is_named():
    assert parse(text="Hello.").voice == DEFAULT_VOICE
    assert parse(text="Hello.", voice="").voice == DEFAULT_VOICE
    assert parse(text="Hello.", voice=None).voice == DEFAULT_VOICE


def test_named_voice_and_speaker_are_kept():
    request = parse(text="Hello.", voice="en_GB-other-low", speaker=3)
    assert (request.voice, request.speaker) == ("en_GB-other-low", "3")


def test_no_speaker_is_none():
    assert parse(text="Hello.").speaker is None


@pytest.mark.parametrize("field", ["voice", "speaker"])
def test_voice_and_speaker_must_be_strings(field):
    with pytest.raises(InvalidRequest) as caught:
        parse(text="Hello.", **{field: ["x"]})
    assert caught.value.message == f"{field} must be a string"


def test_parsed_request_is_frozen():
    request = parse(text="Hello.")
    with pytest.raises(AttributeError):
        request.text = "Bye."  # type: ignore[misc]
