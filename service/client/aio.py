"""``AsyncClient``: ``Client``'s methods as coroutines, on ``httpx.AsyncClient``.

    async with AsyncClient() as c:
        job = await c.run("generate", "ddpm-digits", {"class_label": "7", "steps": 10})
        async for event in c.events(job.id):
            ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Self

import httpx

from service.client import _base as base
from service.client.errors import ConnectionFailed, WaitTimeout
from service.schemas import JobList, JobRecord, ModelInfo, Upload, Usage, WebhookSecret, WorkerInfo


class AsyncClient:
    """``Client`` on asyncio: the same methods, each awaited (``events`` and ``iter_jobs``
    are async iterators)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 30.0, retries: int = 3,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url, headers = base.settings(base_url, api_key)
        self.retries = retries
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout, read=timeout + base.MAX_PREFER_WAIT))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kw)
            except httpx.TransportError as e:
                raise ConnectionFailed(self.base_url, str(e) or type(e).__name__) from None
            sleep = base.should_retry(response, attempt, self.retries)
            if sleep is None:
                return response
            attempt += 1
            await asyncio.sleep(sleep)

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return base.checked(await self._request(method, path, **kw))

    # -- jobs ---------------------------------------------------------------------------------
    async def submit(self, kind: str, model: str, input: dict[str, Any], *, id: str | None = None,
               timeout_s: float | None = None, wait: float | None = None,
               priority: int | None = None, webhook: str | None = None,
               webhook_events: list[str] | None = None,
               files: dict[str, Path | bytes] | None = None) -> JobRecord:
        """Submit a job; with ``wait`` the server holds the answer up to that many seconds
        (``Prefer: wait``, at most 60) and returns the finished record if the job ends.

        ``files`` (name → path or bytes) go with the request in one multipart body; the
        input names each as ``{"file": name}`` (``{"image": {"file": "photo"}}``), and
        they are stored as the job's own uploads, deleted with it."""
        body = base.job_body(kind, model, input, id, timeout_s, priority=priority,
                             webhook=webhook, webhook_events=webhook_events)
        if not files:
            return JobRecord.model_validate(
                await self._json("POST", "/v1/jobs", json=body, headers=base.prefer(wait)))
        parts, handles = base.job_parts(body, files)
        try:
            return JobRecord.model_validate(await self._json(
                "POST", "/v1/jobs", files=parts, headers=base.prefer(wait)))
        finally:
            for handle in handles:
                handle.close()

    async def get(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(await self._json("GET", f"/v1/jobs/{job_id}"))

    async def delete(self, job_id: str) -> None:
        """Delete the job: its record, events, artifacts and moved inputs (a queued or
        running job is canceled first). ``NotFound`` for another owner's job."""
        base.no_content(await self._request("DELETE", f"/v1/jobs/{job_id}"))

    # -- uploads ------------------------------------------------------------------------------
    async def upload(self, source: Path | bytes, filename: str | None = None) -> Upload:
        """Upload an image (a path, streamed from disk, or bytes); a job input names it as
        ``{"image": {"upload": upload.id}}``."""
        files, handle = base.upload_files(source, filename)
        try:
            return Upload.model_validate(await self._json("POST", "/v1/uploads", files=files))
        finally:
            if handle is not None:
                handle.close()

    async def delete_upload(self, upload_id: str) -> None:
        base.no_content(await self._request("DELETE", f"/v1/uploads/{upload_id}"))

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job; a finished job comes back unchanged."""
        return JobRecord.model_validate(await self._json("POST", f"/v1/jobs/{job_id}/cancel"))

    async def list(self, *, status: str | None = None, kind: str | None = None, limit: int = 50,
             cursor: str | None = None) -> JobList:
        """One page of the caller's jobs, newest first; ``next_cursor`` fetches the next."""
        params = {k: v for k, v in (("status", status), ("kind", kind), ("limit", limit),
                                    ("cursor", cursor)) if v is not None}
        return JobList.model_validate(await self._json("GET", "/v1/jobs", params=params))

    async def iter_jobs(self, *, status: str | None = None, kind: str | None = None,
                  page_size: int = 50) -> AsyncIterator[JobRecord]:
        """Every job of the caller, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list(status=status, kind=kind, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def wait(self, job_id: str, timeout: float | None = None,
             on_progress: Callable[[JobRecord], None] | None = None) -> JobRecord:
        """Poll until the job is final (0.1 s, growing to 2 s between reads); raise
        ``WaitTimeout`` after ``timeout`` seconds."""
        start, interval = time.monotonic(), 0.1
        while True:
            job = await self.get(job_id)
            if job.status in base.TERMINAL:
                return job
            if on_progress is not None:
                on_progress(job)
            if timeout is not None and time.monotonic() - start >= timeout:
                raise WaitTimeout(job_id, job.status, timeout)
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, 2.0)

    async def run(self, kind: str, model: str, input: dict[str, Any], *,
            timeout: float | None = None, **submit: Any) -> JobRecord:
        """Submit and wait: ``Prefer: wait`` first, then polling for the rest of ``timeout``."""
        start = time.monotonic()
        job = await self.submit(kind, model, input, wait=min(timeout or 60.0, 60.0), **submit)
        if job.status in base.TERMINAL:
            return job
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return await self.wait(job.id, left)

    async def events(self, job_id: str, last_event_id: int | None = None, *,
               reconnects: int = 5) -> AsyncIterator[base.Event]:
        """The job's events until its final status. A dropped stream is resumed with
        ``Last-Event-ID`` (``reconnects`` times in a row), so no event is seen twice."""
        after, tries = last_event_id, 0
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            lost: Exception | None = None
            try:
                async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                       timeout=httpx.Timeout(30.0, read=60.0)) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        base.checked(r)
                    parser = base.SseParser()
                    async for line in r.aiter_lines():
                        for event in parser.feed(line):
                            after, tries = event.id, 0
                            yield event
                            if event.final:
                                return
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as e:
                lost = e
            except httpx.TransportError as e:
                raise ConnectionFailed(self.base_url, str(e) or type(e).__name__) from None
            tries += 1
            if tries > reconnects:
                if lost is None:
                    return  # the server ended the stream (the job expired meanwhile)
                raise ConnectionFailed(self.base_url, f"event stream lost: {lost}")
            await asyncio.sleep(min(0.2 * tries, 2.0))

    # -- artifacts ------------------------------------------------------------------------------
    async def artifact(self, job_id: str, name: str) -> bytes:
        response = await self._request("GET", f"/v1/jobs/{job_id}/artifacts/{name}",
                                   follow_redirects=True)  # a presigned URL, where set
        if response.status_code >= 400:
            base.checked(response)
        return response.content

    async def download(self, job: JobRecord, out: Path, prefix: str = "") -> list[Path]:
        """Write every artifact of the job's output under ``out``; return the paths."""
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for art in base.artifacts(job):
            path = out / f"{prefix}{art.name}"
            path.write_bytes(await self.artifact(job.id, art.name))
            paths.append(path)
        return paths

    # -- models, workers, health ----------------------------------------------------------------
    async def models(self) -> list[ModelInfo]:
        listing = await self._json("GET", "/v1/models")
        return [ModelInfo.model_validate(m) for m in listing["models"]]

    async def model(self, name: str) -> ModelInfo:
        return ModelInfo.model_validate(await self._json("GET", f"/v1/models/{name}"))

    async def delete_model(self, name: str) -> None:
        """Delete one of this key's fine-tuned models (``NotFound`` for anyone else's)."""
        base.no_content(await self._request("DELETE", f"/v1/models/{name}"))

    async def workers(self) -> list[WorkerInfo]:
        listing = await self._json("GET", "/v1/workers")
        return [WorkerInfo.model_validate(w) for w in listing["workers"]]

    async def usage(self) -> Usage:
        """Device-seconds this key's jobs used in the current quota period."""
        return Usage.model_validate(await self._json("GET", "/v1/usage"))

    async def webhook_secret(self) -> str:
        """The secret that signs this key's webhooks (Standard Webhooks)."""
        return str(WebhookSecret.model_validate(
            await self._json("GET", "/v1/webhook-secret")).secret)

    async def health(self) -> bool:
        """The process answers (``/healthz``)."""
        return (await self._request("GET", "/healthz")).status_code == 200

    async def ready(self) -> dict[str, Any]:
        """``/readyz``: ``{"ready": bool, "checks": {...}}`` (a 503 is an answer, not an error)."""
        try:
            result: dict[str, Any] = (await self._http.get("/readyz")).json()
        except httpx.TransportError as e:
            raise ConnectionFailed(self.base_url, str(e) or type(e).__name__) from None
        return result
