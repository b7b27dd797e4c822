"""convoy's error taxonomy: each error has a ``code`` (what a failed job's ``error.code`` and
the API's error envelope say) and an HTTP ``status`` (what the service's one handler
answers). The worker runtime turns whatever ended a run into one of these
(``workers.runtime.failure``) and records ``job_error`` of it; only ``InvalidInput``
blames the caller: any other exception from a model is ``Internal``."""

from __future__ import annotations

from typing import Any


class ConvoyError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class Internal(ConvoyError):
    """A bug or a failure of the service: not the caller's fault."""


class InvalidInput(ConvoyError):
    code, status = "invalid_input", 422


class BadRequest(ConvoyError):
    """A malformed header (the body's faults are InvalidInput)."""

    code, status = "bad_request", 400


class Unauthorized(ConvoyError):
    code, status = "unauthorized", 401


class NotFound(ConvoyError):
    code, status = "not_found", 404


class Conflict(ConvoyError):
    code, status = "conflict", 409


class PayloadTooLarge(ConvoyError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(ConvoyError):
    code, status = "unsupported_media_type", 415


class RateLimited(ConvoyError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ConvoyError):
    code, status = "unavailable", 503

    def __init__(self, message: str, retry_after: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# The codes only a job's run ends with (never an HTTP answer).
class GpuOutOfMemory(ConvoyError):
    code = "gpu_oom"


class TimedOut(ConvoyError):
    code = "timeout"


class WorkerLost(ConvoyError):
    code = "worker_lost"


def job_error(error: ConvoyError) -> dict[str, str]:
    """The ``error`` of a failed job's record."""
    return {"code": error.code, "message": error.message[:2000]}
