"""What the sync and async clients share: settings, requests as data, answers to records,
the server-sent-events parser and the retry rule. Neither I/O nor httpx lives here beyond
the ``httpx.Response`` it reads."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from service.client.errors import api_error
from service.schemas import EVENT_PAYLOADS, Artifact, JobRecord, JobStatus

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "canceled")
RETRY_STATUSES = (429, 503)
MAX_PREFER_WAIT = 60.0


@dataclass(frozen=True)
class Event:
    """One server-sent event of a job: ``id`` (1, 2, ...), ``type`` and its JSON ``data``."""

    id: int
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        """The event that ends the stream: a final status."""
        return self.type == "status" and self.data.get("status") in TERMINAL

    def payload(self) -> BaseModel | dict[str, Any]:
        """``data`` as its typed model (``StatusEvent``, ``ProgressEvent``, ...)."""
        model = EVENT_PAYLOADS.get(self.type)
        return model.model_validate(self.data) if model and self.type != "output" else self.data


@dataclass
class SseParser:
    """Feeds on lines of ``text/event-stream``; yields an ``Event`` at each blank line."""

    fields: dict[str, str] = field(default_factory=dict)

    def feed(self, line: str) -> Iterator[Event]:
        if line == "":
            fields, self.fields = self.fields, {}
            if "event" in fields:
                data = json.loads(fields.get("data") or "{}")
                yield Event(int(fields.get("id") or 0), fields["event"], data)
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            self.fields[name] = self.fields[name] + "\n" + value \
                if name == "data" and name in self.fields else value


def settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and headers, from the arguments or CONVOY_URL and CONVOY_API_KEY."""
    url = (base_url or os.environ.get("CONVOY_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("CONVOY_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return url, headers


def job_body(kind: str, model: str, input: dict[str, Any], id: str | None,
             timeout_s: float | None, **extra: Any) -> dict[str, Any]:
    """The submission's body; ``extra`` fields (priority, webhook, webhook_events) when set."""
    body: dict[str, Any] = {"kind": kind, "model": model, "input": input}
    body.update({k: v for k, v in extra.items() if v is not None})
    if id is not None:
        body["id"] = id
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    return body


def prefer(wait: float | None) -> dict[str, str]:
    return {"Prefer": f"wait={min(wait, MAX_PREFER_WAIT):g}"} if wait else {}


def retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def should_retry(response: httpx.Response, attempt: int, retries: int) -> float | None:
    """Seconds to sleep before trying again, or None: 429 and 503 are retried after their
    Retry-After (1 s when absent, at most 30 s), ``retries`` times."""
    if response.status_code not in RETRY_STATUSES or attempt >= retries:
        return None
    return min(retry_after(response) or 1.0, 30.0)


def checked(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer; the matching ``ApiError`` otherwise."""
    if response.status_code >= 400:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise api_error(response.status_code, body, retry_after(response))
    return response.json()


def no_content(response: httpx.Response) -> None:
    """Nothing, for a 2xx answer without a body (204); the matching ``ApiError`` otherwise."""
    if response.status_code >= 400:
        checked(response)


_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".webp": "image/webp", ".bmp": "image/bmp"}


def _file_part(source: Path | bytes, filename: str | None) -> tuple[tuple[str, Any, str], Any]:
    """(an httpx file part, the open file to close afterwards or None): a path is streamed
    from disk, never read whole."""
    if isinstance(source, bytes):
        return (filename or "image", source, "application/octet-stream"), None
    path = Path(source)
    handle = path.open("rb")
    return (filename or path.name, handle,
            _IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")), handle


def upload_files(source: Path | bytes, filename: str | None) -> tuple[dict[str, Any], Any]:
    """(``files=`` for httpx, the open file to close afterwards or None) of an upload."""
    part, handle = _file_part(source, filename)
    return {"file": part}, handle


def job_parts(body: dict[str, Any], files: dict[str, Path | bytes]
              ) -> tuple[list[tuple[str, Any]], list[Any]]:
    """(``files=`` for httpx, the open files to close afterwards) of a multipart submission:
    the request as the part ``job`` and each file as the part of its key, which the input
    names as ``{"file": key}``."""
    parts: list[tuple[str, Any]] = [("job", (None, json.dumps(body), "application/json"))]
    handles = []
    for name, source in files.items():
        part, handle = _file_part(source, None)
        parts.append((name, part))
        if handle is not None:
            handles.append(handle)
    return parts, handles


def artifacts(job: JobRecord) -> list[Artifact]:
    """Every artifact in a job's output, in order."""
    found: list[Artifact] = []

    def walk(value: Any) -> None:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict):
            if "url" in value and "content_type" in value and "name" in value:
                found.append(Artifact.model_validate(value))
            else:
                for v in value.values():
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(job.output)
    return found
