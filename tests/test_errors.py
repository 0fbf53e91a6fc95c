"""Spec of the error hierarchy: each error a client can see has a fixed status and a stable code."""

from __future__ import annotations

import pytest

from server import errors
from server.errors import Overloaded, TTSError

EXPECTED = {
    errors.InvalidRequest: (400, "invalid_request"),
    errors.UnknownVoice: (400, "unknown_voice"),
    errors.ModelNotFound: (400, "model_not_found"),
    errors.Unauthorized: (401, "unauthorized"),
    errors.NotFound: (404, "not_found"),
    errors.Conflict: (409, "conflict"),
    errors.IdempotencyKeyReused: (422, "idempotency_key_reused"),
    errors.TextTooLong: (413, "text_too_long"),
    errors.BodyTooLarge: (413, "body_too_large"),
    errors.UriTooLong: (414, "uri_too_long"),
    errors.RangeNotSatisfiable: (416, "range_not_satisfiable"),
    errors.RateLimited: (429, "rate_limited"),
    errors.HeadersTooLarge: (431, "headers_too_large"),
    errors.SynthesisFailed: (500, "synthesis_failed"),
    errors.WorkerLost: (500, "worker_lost"),
    errors.Overloaded: (503, "overloaded"),
    errors.NotReady: (503, "not_ready"),
    errors.StorageUnavailable: (503, "storage_unavailable"),
    errors.JobsUnavailable: (503, "jobs_unavailable"),
}


def all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


def test_every_error_class_is_specified_here():
    # A new error must be given its status and code on purpose, and listed above.
    assert {cls for cls in all_subclasses(TTSError) if cls.__module__ == "server.errors"} == set(EXPECTED)


@pytest.mark.parametrize(("cls", "status_and_code"), EXPECTED.items(), ids=[c.__name__ for c in EXPECTED])
def test_error_has_its_status_and_code(cls, status_and_code):
    error = cls("message for the client")
    assert (error.status, error.code) == status_and_code
    assert 400 <= error.status <= 599
    assert error.message == "message for the client"
    assert str(error) == "message for the client"


def test_codes_are_unique():
    codes = [code for _, code in EXPECTED.values()]
    assert len(codes) == len(set(codes))


def test_root_error_is_a_generic_500():
    error = TTSError("x")
    assert (error.status, error.code) == (500, "internal_error")
    assert error.headers == {}
    assert error.retry_after_s is None


def test_retry_after_becomes_a_header():
    error = Overloaded("busy", retry_after_s=2)
    assert error.retry_after_s == 2
    assert error.headers == {"Retry-After": "2"}


def test_extra_headers_are_kept_beside_retry_after():
    error = Overloaded("busy", retry_after_s=1, headers={"X-Reason": "queue"})
    assert error.headers == {"X-Reason": "queue", "Retry-After": "1"}


def test_given_headers_mapping_is_copied():
    headers = {"X-Reason": "queue"}
    Overloaded("busy", retry_after_s=1, headers=headers)
    assert headers == {"X-Reason": "queue"}
