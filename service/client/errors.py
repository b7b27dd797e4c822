"""The errors the SDK raises: one class per error code of the API, so that callers catch
what they can act on (``NotFound``, ``InvalidInput``, ``RateLimited`` ...) and the CLI
prints one line for each."""

from __future__ import annotations

from typing import Any


class ConvoyClientError(Exception):
    """Base of everything the SDK raises."""


class ConnectionFailed(ConvoyClientError):
    """The server did not answer (not running, wrong address, network down)."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"cannot reach {url}: {why}")
        self.url = url


class WaitTimeout(ConvoyClientError):
    """A job did not finish within the time the caller gave."""

    def __init__(self, job_id: str, status: str, seconds: float) -> None:
        super().__init__(f"job {job_id} is still {status} after {seconds:g} s")
        self.job_id = job_id
        self.status = status


class ApiError(ConvoyClientError):
    """An error answer: ``{"error": {"code", "message", "details"}}`` with its status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


class InvalidInput(ApiError):
    """422: the request does not fit the schema or the model's limits."""


class Unauthorized(ApiError):
    """401: missing or unknown API key."""


class NotFound(ApiError):
    """404: no such job (or another owner's), artifact or model."""


class Conflict(ApiError):
    """409: a client-chosen id taken by a different submission."""


class PayloadTooLarge(ApiError):
    """413: the body is over the server's limit."""


class UnsupportedMediaType(ApiError):
    """415: an image format outside the allowlist."""


class RateLimited(ApiError):
    """429: too many requests, or too many queued jobs, for this key."""


class Unavailable(ApiError):
    """503: the store or broker does not answer, or the queue is full."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    415: UnsupportedMediaType, 422: InvalidInput, 429: RateLimited, 503: Unavailable}


def api_error(status: int, body: Any, retry_after: float | None) -> ApiError:
    """The error for an answer's status and JSON body (or text, from a proxy)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code", "error"))
        message = str(error.get("message", ""))
        details = error.get("details")
    else:
        code, message, details = "http_error", str(body)[:200], None
    return _BY_STATUS.get(status, ApiError)(status, code, message, details, retry_after)
