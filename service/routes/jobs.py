"""``/v1/jobs``: submit, get, list, cancel, events (SSE), artifacts."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from service.deps import Caller, CallerDep, State, StateDep
from service.errors import V1_ERRORS, error_responses
from service.metrics import JOBS_SUBMITTED
from service.routes.webhooks import check_webhook
from service.schemas import EVENTS_DESCRIPTION, JobList, JobRecord
from service.submitter import BrokerDown
from workers.contract import JobRequest, check, request_hash
from workers.errors import Conflict, InvalidInput, NotFound, RateLimited, Unavailable
from workers.runtime import finish_and_announce
from workers.settings import new_id
from workers.store import TERMINAL, public_record
from workers.store.base import STATUSES, QueueFull, now_iso

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=V1_ERRORS)
_WAIT = re.compile(r"wait\s*=\s*(\d+(?:\.\d+)?)")


def owned_job(state: State, caller: Caller, job_id: str) -> dict[str, Any]:
    """The caller's job, or 404 (also for someone else's job: its existence is not told)."""
    job = state.store.get(job_id)
    if job is None or job["owner"] != caller.owner:
        raise NotFound(f"no job {job_id!r}")
    return job


def _prefer_wait(prefer: str | None, limit: float) -> float:
    if not prefer:
        return 0.0
    match = _WAIT.search(prefer)
    return min(float(match.group(1)), limit) if match else 0.0


INLINE_CHECK_BYTES = 64 * 1024  # smaller bodies are checked on the event loop: no thread hop


@router.post("", status_code=202, operation_id="submitJob", response_model=JobRecord,
             response_description="accepted: the job record (queued, or running)",
             responses={200: {"model": JobRecord, "description": "finished within Prefer: "
                              "wait, or an idempotent resubmission of a client-chosen id"},
                        **error_responses(409, 415, 429)})
async def submit(
    request: Request,
    state: StateDep,
    caller: CallerDep,
    body: Annotated[JobRequest, Body()],
    prefer: Annotated[str | None, Header(
        description="wait=N: hold the reply up to N seconds (at most CONVOY_MAX_WAIT_S, 60 by "
        "default); 200 with the finished record if the job ends by then, else 202",
        examples=["wait=10"])] = None,
) -> JSONResponse:
    """Submit a job. The input schema depends on ``kind`` (see the request body's variants);
    the model's own limits (``GET /v1/models``) may be tighter than the schema's bounds."""
    retry = state.limiter.take(caller.key) if state.keys else 0.0
    if retry > 0:
        raise RateLimited("too many requests for this API key", retry_after=retry)
    settings = state.settings
    wait = _prefer_wait(prefer, settings.max_wait_s)
    job_id = body.id or new_id()
    waiter = state.waiters.expect(job_id) if wait > 0 else None
    try:
        length = int(request.headers.get("content-length") or INLINE_CHECK_BYTES + 1)
        if body.id is None and length <= INLINE_CHECK_BYTES:
            job, existing = _prepare(state, caller, body, job_id)
        else:
            job, existing = await anyio.to_thread.run_sync(_prepare, state, caller, body, job_id)
        if job is None:
            return JSONResponse(public_record(existing), status_code=200)
        if job.get("webhook"):
            await anyio.to_thread.run_sync(state.outbox.watch, job_id)  # before the job exists
        try:
            record, created = await state.submitter.submit(job)
        except QueueFull as e:
            if e.whose == "owner":
                raise RateLimited(f"this key already has {settings.max_queued_per_owner} "
                                  "queued jobs", retry_after=5.0) from e
            raise Unavailable("the queue is full", retry_after=10.0) from e
        except BrokerDown as e:
            raise Unavailable(str(e)) from e
        if not created:
            return JSONResponse(public_record(
                _resubmitted(record, caller, job["request_hash"])), status_code=200)
        JOBS_SUBMITTED.labels(kind=body.kind, model=job["model"]).inc()
        await anyio.to_thread.run_sync(state.lifecycle.enqueued, record)
        if wait > 0:
            done = await state.waiters.wait(record, waiter, wait)
            if done is not None and done["status"] in TERMINAL:
                return JSONResponse(public_record(done), status_code=200)
            record = done or record
        return JSONResponse(public_record(record), status_code=202)
    finally:
        state.waiters.forget(job_id, waiter)


def _prepare(state: State, caller: Caller, body: JobRequest, job_id: str
             ) -> tuple[dict[str, Any], None] | tuple[None, dict[str, Any]]:
    """Check the input and build the job; (job, None), or (None, the existing record) for
    the idempotent resubmission of a job id."""
    settings = state.settings
    entry = state.catalog.get(body.model)
    data = check(body.kind, body.input.model_dump(), entry, settings.max_image_pixels)
    if body.timeout_s is not None and body.timeout_s > settings.max_job_timeout_s:
        raise InvalidInput(f"timeout_s is over the limit of {settings.max_job_timeout_s}")
    webhook_events = check_webhook(settings, body.webhook, body.webhook_events)
    fingerprint = request_hash(body.model_dump(mode="json", exclude={"id"}))
    if body.id is not None:
        existing = state.store.get(body.id)
        if existing is not None:
            return None, _resubmitted(existing, caller, fingerprint)
    return {
        "id": job_id, "owner": caller.owner, "kind": body.kind,
        "model": entry.name, "queue": entry.queue, "input": data,
        "request_hash": fingerprint, "webhook": body.webhook, "timeout_s": body.timeout_s,
        "created_at": now_iso(), "status": "queued", "attempts": 0,
        **webhook_events, **state.lifecycle.admit(caller.owner, body.priority),
    }, None


def _resubmitted(existing: dict[str, Any], caller: Caller, fingerprint: str) -> dict[str, Any]:
    if existing["owner"] != caller.owner or existing.get("request_hash") != fingerprint:
        raise Conflict(f"job id {existing['id']!r} is taken by a different submission")
    return existing


@router.get("", operation_id="listJobs", response_model=JobList)
def list_jobs(
    state: StateDep,
    caller: CallerDep,
    status: Annotated[str | None, Query(description=f"one of {', '.join(STATUSES)}")] = None,
    kind: Annotated[str | None, Query(description="only jobs of this kind")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="jobs per page")] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$", description="next_cursor of "
                                        "the previous page")] = None,
) -> dict[str, Any]:
    """The caller's jobs, newest first."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {list(STATUSES)}")
    jobs, next_cursor = state.store.list(caller.owner, status, kind, limit, cursor)
    records = state.lifecycle.decorate([public_record(j) for j in jobs], jobs)
    return {"jobs": records, "next_cursor": next_cursor}


@router.get("/{job_id}", operation_id="getJob", response_model=JobRecord)
def get_job(job_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The job record (404 for an unknown id and for another owner's job)."""
    job = owned_job(state, caller, job_id)
    return state.lifecycle.decorate([public_record(job)], [job])[0]


@router.post("/{job_id}/cancel", operation_id="cancelJob", response_model=JobRecord)
def cancel_job(job_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel a queued or running job; a finished job is returned unchanged."""
    job = owned_job(state, caller, job_id)
    if job["status"] in TERMINAL:
        return public_record(job)
    state.store.request_cancel(job_id)
    if job["status"] == "queued":
        finish_and_announce(state.store, job_id, None, "canceled")
    return public_record(owned_job(state, caller, job_id))


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            operation_id="streamJobEvents", response_description=EVENTS_DESCRIPTION,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def job_events(
    job_id: str,
    state: StateDep,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(description="resume after this event id",
                                                examples=["3"])] = None,
) -> EventSourceResponse:
    """Server-sent events; reconnect with ``Last-Event-ID`` to resume after that event."""
    await anyio.to_thread.run_sync(owned_job, state, caller, job_id)
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
    return EventSourceResponse(_stream(state, job_id, after), ping=15)


async def _stream(state: State, job_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    while True:
        events = await anyio.to_thread.run_sync(state.store.events, job_id, after, 1.0)
        for event in events:
            after = event.seq
            yield ServerSentEvent(data=json.dumps(event.data), event=event.type, id=str(event.seq))
            if event.type == "status" and event.data.get("status") in TERMINAL:
                return
        if not events:
            job = await anyio.to_thread.run_sync(state.store.get, job_id)
            if job is None:
                return
            if job["status"] in TERMINAL:  # the final event was read before `after`
                tail = await anyio.to_thread.run_sync(state.store.events, job_id, after, 0.0)
                if not tail:
                    return


@router.get("/{job_id}/artifacts/{name}", response_class=Response,
            operation_id="getArtifact", response_description="the artifact's bytes",
            responses={200: {"content": {"image/png": {"schema": {"type": "string",
                                                                  "format": "binary"}}}}})
def get_artifact(job_id: str, name: str, state: StateDep, caller: CallerDep) -> Response:
    """The bytes of one of the job's artifacts (as named in its output or events)."""
    owned_job(state, caller, job_id)
    found = state.store.get_artifact(job_id, name)
    if found is None:
        raise NotFound(f"job {job_id!r} has no artifact {name!r}")
    data, content_type = found
    return Response(data, media_type=content_type,
                    headers={"Cache-Control": "private, max-age=86400"})
