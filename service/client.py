"""A small client of the HTTP API, used by ``convoy submit`` and ``make demo``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

TERMINAL = ("succeeded", "failed", "canceled")


def sse_events(client: httpx.Client, job_id: str, last_id: str | None = None
               ) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of a job's event stream until it ends."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        r.raise_for_status()
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            if line == "":
                if "event" in fields:
                    yield fields.get("id", ""), fields["event"], json.loads(fields.get("data", "{}"))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


def follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Follow a job's events with a progress bar; return its final record."""
    bar: tqdm[Any] | None = None
    for _, event, data in sse_events(client, job_id):
        if event == "progress":
            if bar is None:
                bar = tqdm(total=data["total"], desc=job_id[:8], unit="step")
            bar.n = data["step"]
            bar.refresh()
        elif event == "status" and data.get("status") in TERMINAL:
            break
    if bar is not None:
        bar.close()
    record: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return record


def artifacts_of(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if "url" in value and "content_type" in value:
            yield value
        else:
            for v in value.values():
                yield from artifacts_of(v)
    elif isinstance(value, list):
        for v in value:
            yield from artifacts_of(v)


def save_artifacts(client: httpx.Client, job: dict[str, Any], out: Path,
                   prefix: str = "") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for art in artifacts_of(job.get("output")):
        r = client.get(art["url"])
        r.raise_for_status()
        path = out / f"{prefix}{art['name']}"
        path.write_bytes(r.content)
        paths.append(path)
    return paths
