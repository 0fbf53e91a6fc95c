"""Spec of the request and response models: what each field accepts, and how a refusal names it."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequest, Overloaded, RateLimited, TextTooLong, Unauthorized
from server.schemas import (
    AudioFormat,
    Error,
    ErrorDetail,
    PurgeAll,
    PurgeOne,
    Readiness,
    SpeechFields,
    StreamFields,
    TTSFields,
    dump,
    error_codes,
    native_error,
    openai_error,
    validate,
    validate_purge,
)


def refusal(model: type[SpeechFields], **fields: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate(model, fields)
    return caught.value


def test_format_defaults_to_wav_for_tts_and_pcm_for_the_stream():
    assert validate(TTSFields, {"text": "Hi."}).format is AudioFormat.WAV
    assert validate(StreamFields, {"text": "Hi."}).format is AudioFormat.PCM


@pytest.mark.parametrize("name", ["wav", "pcm", "mp3", "opus", "aac", "flac"])
def test_every_format_is_a_known_value(name):
    assert validate(StreamFields, {"text": "Hi.", "format": name}).format == name


@pytest.mark.parametrize("blank", ["", None])
def test_empty_format_means_the_default(blank):
    assert validate(StreamFields, {"text": "Hi.", "format": blank}).format is AudioFormat.PCM


def test_unknown_format_lists_the_formats_and_names_the_field():
    error = refusal(TTSFields, text="Hi.", format="ogg")
    assert (error.status, error.param) == (400, "format")
    assert error.message == "format must be one of wav, pcm, mp3, opus, aac or flac"


def test_missing_text_names_the_field():
    error = refusal(TTSFields)
    assert (error.message, error.param) == ("text is required", "text")


def test_unknown_field_is_named():
    error = refusal(StreamFields, text="Hi.", pitch="high")
    assert (error.message, error.param) == ("unknown field: pitch", "pitch")


def test_speed_out_of_range_names_the_field_and_the_range():
    error = refusal(TTSFields, text="Hi.", speed="9")
    assert (error.message, error.param) == ("speed must be from 0.25 to 4.0, got 9", "speed")


def test_speed_preset_is_normalized_and_a_rate_is_a_number():
    assert validate(TTSFields, {"text": "Hi.", "speed": " FAST "}).speed == "fast"
    assert validate(TTSFields, {"text": "Hi.", "speed": "1.5"}).speed == 1.5
    assert validate(TTSFields, {"text": "Hi.", "speed": 2}).speed == 2.0


@pytest.mark.parametrize("value", [True, 1.5, ["x"], {"id": "x"}])
def test_voice_must_be_a_string_or_a_whole_number(value):
    error = refusal(TTSFields, text="Hi.", voice=value)
    assert (error.message, error.param) == ("voice must be a string", "voice")


def test_a_numbered_speaker_becomes_its_name():
    assert validate(TTSFields, {"text": "Hi.", "speaker": 3}).speaker == "3"


def test_validated_fields_are_frozen():
    fields = validate(TTSFields, {"text": "Hi."})
    with pytest.raises(ValueError, match="frozen"):
        fields.text = "Bye."  # type: ignore[misc]


def test_purge_takes_one_hash_or_everything():
    assert validate_purge({"hash": "a" * 64}) == PurgeOne(hash="a" * 64)
    assert validate_purge({"all": True}) == PurgeAll(all=True)


@pytest.mark.parametrize(
    "body", [{}, {"hash": "../etc"}, {"all": False}, {"all": "yes"}, {"hash": "a" * 64, "all": True}]
)
def test_any_other_purge_body_is_refused_with_its_shape(body):
    with pytest.raises(InvalidRequest) as caught:
        validate_purge(body)
    assert caught.value.message == 'the body must be {"hash": "<64 hex digits>"} or {"all": true}'


def test_readiness_leaves_out_a_problem_it_does_not_have():
    ready = Readiness(
        status="ready", voices=["v"], providers={"v": "CPUExecutionProvider"}, redis="ok", store="disabled"
    )
    assert dump(ready) == {
        "status": "ready",
        "voices": ["v"],
        "providers": {"v": "CPUExecutionProvider"},
        "redis": "ok",
        "store": "disabled",
    }


def test_error_body_is_the_one_native_shape():
    body = Error(error=ErrorDetail(code="invalid_request", message="text is required"))
    assert dump(body) == {"error": {"code": "invalid_request", "message": "text is required"}}


def test_error_codes_include_every_error_class_and_the_frameworks():
    codes = error_codes()
    assert {"invalid_request", "text_too_long", "rate_limited", "method_not_allowed", "bad_request"} <= set(
        codes
    )
    assert codes == sorted(set(codes))


def test_a_validation_error_in_the_native_shape_names_no_field():
    error = refusal(TTSFields, text="Hi.", speed="warp")
    assert dump(native_error(error)) == {
        "error": {
            "code": "invalid_request",
            "message": (
                "speed must be a number from 0.25 to 4.0 or one of very_slow, slow, normal, fast, very_fast"
            ),
        }
    }


def test_a_validation_error_in_openais_shape_names_the_field_as_param():
    error = refusal(TTSFields, text="Hi.", format="ogg")
    assert dump(openai_error(error)) == {
        "error": {
            "message": "format must be one of wav, pcm, mp3, opus, aac or flac",
            "type": "invalid_request_error",
            "param": "format",
            "code": "invalid_request",
        }
    }


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TextTooLong("long", param="text"), "invalid_request_error"),
        (Unauthorized("key"), "authentication_error"),
        (RateLimited("slow down", retry_after_s=1), "rate_limit_error"),
        (Overloaded("busy", retry_after_s=1), "server_error"),
    ],
)
def test_openais_error_type_follows_the_status(error, kind):
    body = dump(openai_error(error))
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == kind
    assert body["error"]["code"] == error.code
    assert body["error"]["param"] == error.param
