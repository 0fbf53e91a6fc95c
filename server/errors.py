"""The error hierarchy: each error knows its HTTP status, a stable code and a client-safe message.

Services raise these; `handlers.base.BaseHandler.write_error` maps them to the JSON body
`{"error": {"code": ..., "message": ...}}` in one place. Anything else is a 500 that reveals nothing.
"""

from __future__ import annotations


class TTSError(Exception):
    """Root of every error a client may see."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault, for shapes that name it (OpenAI's)
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(retry_after_s)


class InvalidRequest(TTSError):
    status, code = 400, "invalid_request"


class ModelNotFound(TTSError):
    status, code = 400, "model_not_found"


class UnknownVoice(TTSError):
    status, code = 400, "unknown_voice"


class TextTooLong(TTSError):
    status, code = 413, "text_too_long"


class BodyTooLarge(TTSError):
    status, code = 413, "body_too_large"


class Unauthorized(TTSError):
    status, code = 401, "unauthorized"


class RateLimited(TTSError):
    status, code = 429, "rate_limited"


class UriTooLong(TTSError):
    status, code = 414, "uri_too_long"


class HeadersTooLarge(TTSError):
    status, code = 431, "headers_too_large"


class NotFound(TTSError):
    status, code = 404, "not_found"


class RangeNotSatisfiable(TTSError):
    status, code = 416, "range_not_satisfiable"


class Overloaded(TTSError):
    status, code = 503, "overloaded"


class NotReady(TTSError):
    status, code = 503, "not_ready"


class StorageUnavailable(TTSError):
    status, code = 503, "storage_unavailable"


class SynthesisFailed(TTSError):
    status, code = 500, "synthesis_failed"


class WorkerLost(SynthesisFailed):
    """A job's last attempt died with its worker (a failed job's error; never an HTTP answer)."""

    status, code = 500, "worker_lost"


class Conflict(TTSError):
    status, code = 409, "conflict"


class IdempotencyKeyReused(TTSError):
    status, code = 422, "idempotency_key_reused"


class JobsUnavailable(TTSError):
    status, code = 503, "jobs_unavailable"
