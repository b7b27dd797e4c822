"""The error envelope as the OpenAPI document describes it, so that clients (and fuzzers)
know every status a route may answer and the shape of the body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from core.contract import JOB_REQUEST


class ErrorDetail(BaseModel):
    code: str = Field(description="bad_request, invalid_input, unauthorized, not_found, conflict, "
                      "payload_too_large, unsupported_media_type, rate_limited, unavailable, "
                      "internal")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


_WHY = {
    400: "a malformed header (Last-Event-ID that is not an event id)",
    401: "missing or unknown API key",
    404: "no such job, artifact or model (also another owner's job)",
    409: "the client-chosen id is taken by a different submission",
    413: "the request body is over the size limit",
    415: "an image in a format outside the allowlist",
    422: "the request does not fit the schema or the model's limits",
    429: "rate limit, queued-jobs cap, or open streams and waits cap of this API key",
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


def _cut(value: object, limit: int) -> object:
    text = value if isinstance(value, int) else str(value)
    if isinstance(text, str) and len(text) > limit:
        return text[:limit] + "…"
    return text


def bounded_errors(errors: Sequence[Any], count: int, max_errors: int,
                   prefix: tuple[str, ...] = ("body",)) -> tuple[str, list[dict[str, Any]]]:
    """(message, details) of a 422 from pydantic's errors: the first ``max_errors``, each
    location part and message cut short, so that a body of a million bad keys gets a reply
    of a few kilobytes. The message names the first error and how many there were."""
    details = [{"loc": [_cut(p, 64) for p in (*prefix, *e.get("loc", ()))],
                "msg": _cut(e.get("msg", ""), 200), "type": _cut(e.get("type", ""), 64)}
               for e in list(errors[:max_errors])]
    if not details:
        return "invalid request", []
    first = details[0]
    where = ".".join(str(p) for p in first["loc"] if p != "body")
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    if count > 1:
        message += f" (and {count - 1} more error{'s' if count > 2 else ''}"
        message += f"; the first {len(details)} are listed)" if count > len(details) else ")"
    return message, details


def request_body_openapi() -> dict[str, Any]:
    """The ``openapi_extra`` of the submit route, which reads its body itself (after the key
    and the rate limit are checked): the request schema, its models under components (see
    ``add_request_models``)."""
    schema = JOB_REQUEST.json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema["title"] = "Body"
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": schema}}}}


def add_request_models(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the models of the submit body among its components."""
    defs = JOB_REQUEST.json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})
    spec.setdefault("components", {}).setdefault("schemas", {}).update(defs)
    return spec
