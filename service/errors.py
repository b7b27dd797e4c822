"""The error envelope as the OpenAPI document describes it, so that clients (and fuzzers)
know every status a route may answer and the shape of the body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="invalid_input, unauthorized, not_found, conflict, "
                      "payload_too_large, unsupported_media_type, rate_limited, unavailable, "
                      "internal")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_WHY = {
    401: "missing or unknown API key",
    404: "no such job, artifact or model (also another owner's job)",
    409: "the client-chosen id is taken by a different submission",
    413: "the request body is over the size limit",
    415: "an image in a format outside the allowlist",
    422: "the request does not fit the schema or the model's limits",
    429: "rate limit or queued-jobs cap of this API key",
    503: "the store or broker does not answer, or the queue is full",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again",
                                "schema": {"type": "integer"}, "required": True}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: each status with the envelope (and Retry-After
    where the API sends it)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorBody, "description": _WHY[status]}
        if status in (429, 503):
            out[status]["headers"] = _RETRY_AFTER
    return out


# What every /v1 route may answer besides its success.
V1_ERRORS = error_responses(401, 404, 413, 422, 503)
