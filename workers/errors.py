"""convoy's error taxonomy; the service maps each to an HTTP status in one handler."""

from __future__ import annotations

from typing import Any


class ConvoyError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


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
