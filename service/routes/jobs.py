"""``/v1/jobs``: submit, get, list, cancel, events (SSE), artifacts."""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from core.blobs import artifact_key
from core.contract import (
    FINETUNE_QUEUE,
    IMAGE_FIELDS,
    JOB_REQUEST,
    JobRequest,
    check,
    pixel_limit,
    request_hash,
)
from core.errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
)
from core.images import WouldBlock, small_decodes_only
from core.inputs import stash_inputs, upload_sizes
from core.metering import delete_job as delete_job_data
from core.settings import new_id
from core.store import TERMINAL, Job, StoreUnavailable
from core.store.base import STATUSES, QueueFull, now_iso, usage_buckets
from core.user_models import resolve
from service.deps import Caller, CallerDep, State, StateDep, get_caller
from service.errors import V1_ERRORS, bounded_errors, error_responses, request_body_openapi
from service.finetune import check_finetune
from service.metrics import JOBS_SUBMITTED
from service.multipart_jobs import is_multipart, submit_multipart, with_multipart
from service.routes.health import NO_WORKER
from service.routes.webhooks import check_webhook
from service.schemas import EVENTS_DESCRIPTION, JobList, JobRecord
from service.submitter import BrokerDown
from service.waiters import wait_terminal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=V1_ERRORS)
_WAIT = re.compile(r"wait\s*=\s*(\d+(?:\.\d+)?)")


def owned_job(state: State, caller: Caller, job_id: str) -> Job:
    """The caller's job, or 404 (also for someone else's job: its existence is not told)."""
    job = state.store.get(job_id)
    if job is None or job.owner != caller.owner:
        raise NotFound(f"no job {job_id!r}")
    return job


def _prefer_wait(prefer: str | None, limit: float) -> float:
    if not prefer:
        return 0.0
    match = _WAIT.search(prefer)
    return min(float(match.group(1)), limit) if match else 0.0


INLINE_CHECK_BYTES = 32 * 1024  # smaller bodies are checked on the event loop (small images too):
# parsing 32 KB of JSON takes ~0.1 ms, less than the two thread hand-offs it would take
MAX_FIELDS = 64  # more keys than any kind's schema has: refused before validation
# Threads that parse, check and decode submissions (a decode may wait for the budget): a
# burst of them must leave threads for everything else.
CHECKS = anyio.CapacityLimiter(16)
MAX_STRUCTURE = 16 * 1024  # bytes outside strings; a submission needs well under 1 KB
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


@router.post("", status_code=202, operation_id="submitJob", response_model=JobRecord,
             response_description="accepted: the job record (queued, or running)",
             openapi_extra=with_multipart(request_body_openapi()),
             responses={200: {"model": JobRecord, "description": "finished within Prefer: "
                              "wait, or an idempotent resubmission of a client-chosen id"},
                        **error_responses(409, 415, 429)})
async def submit(
    request: Request,
    state: StateDep,
    caller: CallerDep,
    prefer: Annotated[str | None, Header(
        description="wait=N: hold the reply up to N seconds (at most CONVOY_MAX_WAIT_S, 60 by "
        "default); 200 with the finished record if the job ends by then, else 202",
        examples=["wait=10"])] = None,
) -> Response:
    """Submit a job. The input schema depends on ``kind`` (see the request body's variants);
    the model's own limits (``GET /v1/models``) may be tighter than the schema's bounds.

    The key and its rate limit are checked before the body is read; the body is parsed,
    validated and its images decoded on a worker thread (a small body whose images are at
    most 128x128 on the event loop), so that no body holds up other requests."""
    return await submit_request(request, state, caller, prefer)


async def submit_request(request: Request, state: State, caller: Caller,
                         prefer: str | None) -> Response:
    """``POST /v1/jobs``, whether the route or ``SubmitFastPath`` took the request."""
    retry = state.limiter.take(caller.key) if state.keys else 0.0
    if retry > 0:
        raise RateLimited("too many requests for this API key", retry_after=retry)
    wait = _prefer_wait(prefer, state.settings.max_wait_s)
    try:
        if is_multipart(request):  # the request and its image files in one body
            return await submit_multipart(request, state, caller,
                                          lambda raw: _submit_body(state, caller, raw, wait))
        raw = await request.body()
    except ClientDisconnect:  # gone, or cut off by the body read timeout: nobody to answer
        return JSONResponse({}, status_code=408)
    return await _submit_body(state, caller, raw, wait)


class SubmitFastPath:
    """ASGI middleware: ``POST /v1/jobs`` answered by ``submit_request`` directly, without
    the framework's routing, dependency resolution and exception middleware between them —
    the submission is the one request a busy service takes hundreds of times a second, and
    that machinery costs it about as much CPU as the submission itself. The route above
    stays (it documents the request in the OpenAPI schema and takes what this passes on).
    Errors of the service's own kinds get the answers the app's handlers give
    (``answer_error``); any other goes up to the app's last-resort handler (500)."""

    def __init__(self, app: ASGIApp, answer_error: Callable[[Exception], Response | None]
                 ) -> None:
        self.app = app
        self.answer_error = answer_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] != "/v1/jobs"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        state: State = scope["app"].state.convoy
        try:
            caller = await get_caller(request, state)
            response = await submit_request(request, state, caller,
                                            request.headers.get("prefer"))
        except Exception as e:
            answer = self.answer_error(e)
            if answer is None:
                raise
            response = answer
        await response(scope, receive, send)


async def _submit_body(state: State, caller: Caller, raw: bytes, wait: float) -> Response:
    """Parse, check and accept a submission's JSON body."""
    settings = state.settings
    if len(raw) <= INLINE_CHECK_BYTES:
        body = parse_job(raw, settings.max_error_details)
    else:
        body = await anyio.to_thread.run_sync(parse_job, raw, settings.max_error_details,
                                              limiter=CHECKS)
    prepared = None
    if body.id is None and len(raw) <= INLINE_CHECK_BYTES and not _has_uploads(body):
        try:  # small images decode here: a thread hop would cost more than the decode
            with small_decodes_only():
                prepared = _prepare(state, caller, body)
        except WouldBlock:
            pass
    job, existing = prepared or await anyio.to_thread.run_sync(
        _prepare, state, caller, body, limiter=CHECKS)
    if job is None:
        return JSONResponse(existing.public(), status_code=200)
    with state.open_per_key.hold(caller.key) if wait > 0 else nullcontext():
        waiter = state.waiters.expect(job.id) if wait > 0 else None
        try:
            return await _accept(state, caller, body, job, wait, waiter)
        finally:
            state.waiters.forget(job.id, waiter)


async def _accept(state: State, caller: Caller, body: JobRequest, job: Job,
                  wait: float, waiter: Any) -> JSONResponse:
    settings = state.settings
    if job.webhook:
        await anyio.to_thread.run_sync(state.outbox.watch, job.id)  # before the job exists
    try:
        record, created = await state.submitter.submit(job)
    except QueueFull as e:
        if e.whose == "owner":
            raise RateLimited(f"this key already has {settings.max_queued_per_owner} "
                              "queued jobs", retry_after=5.0) from e
        if e.whose == "size":
            raise PayloadTooLarge("the input alone is over this key's bound of "
                                  f"{settings.max_stored_bytes_per_owner} stored bytes") from e
        if e.whose == "bytes":
            raise RateLimited(f"this key stores {settings.max_stored_bytes_per_owner} bytes "
                              "of inputs and results already; they expire with their jobs",
                              retry_after=_usage_retry(settings.retention_s)) from e
        raise Unavailable("the queue is full", retry_after=10.0) from e
    except BrokerDown as e:
        raise Unavailable(str(e)) from e
    if not created:
        return JSONResponse(_resubmitted(record, caller, job.request_hash).public(),
                            status_code=200)
    JOBS_SUBMITTED.labels(kind=body.kind, model=job.model).inc()
    if wait > 0:
        done = await state.waiters.wait(record, waiter, wait)
        if done is not None and done.terminal:
            return JSONResponse(done.public(), status_code=200)
        record = done or record
    return JSONResponse(record.public(), status_code=202)


def _has_uploads(body: JobRequest) -> bool:
    """Whether an image of the input names an upload (checking it reads the blob store)."""
    fields = vars(body.input)  # a model's fields (getattr of a missing one costs a raise)
    values = [fields.get(name) for name in IMAGE_FIELDS]
    values += list(fields.get("interpolate_between") or [])
    return any(v is not None and not isinstance(v, str) for v in values)


def parse_job(raw: bytes, max_errors: int) -> JobRequest:
    """The submission in ``raw``, or InvalidInput with at most ``max_errors`` errors listed
    (each value cut short): a body of 500 000 unknown keys gets a small 422, fast."""
    if raw.count(b":") + raw.count(b",") > 4096 and _mostly_structure(raw):
        raise InvalidInput(f"the body has over {MAX_STRUCTURE} bytes of keys, numbers and "
                           "punctuation; a submission needs far fewer")
    try:
        data = json.loads(raw) if raw else None
    except (ValueError, RecursionError) as e:
        raise InvalidInput(f"the body is not JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    for where, obj in (("the body", data), ("input", data.get("input"))):
        if isinstance(obj, dict) and len(obj) > MAX_FIELDS:
            raise InvalidInput(f"{where} has {len(obj)} fields; no kind has more than "
                               f"{MAX_FIELDS}")
    try:
        return JOB_REQUEST.validate_python(data)
    except ValidationError as e:
        raise InvalidInput(*bounded_errors(e.errors(include_url=False), e.error_count(),
                                           max_errors)) from None


def _mostly_structure(raw: bytes) -> bool:
    """Whether ``raw`` has over MAX_STRUCTURE bytes outside its JSON strings. Images are
    strings, so a large honest body has almost nothing outside them; a body of half a
    million keys is found out after its first few thousand, and the scan returns to
    Python between strings, so the event loop's thread gets the GIL meanwhile (parsing it
    would hold the GIL for a second)."""
    outside, pos = 0, 0
    for match in _STRING.finditer(raw):
        outside += match.start() - pos
        pos = match.end()
        if outside > MAX_STRUCTURE:
            return True
    return outside + len(raw) - pos > MAX_STRUCTURE


def _prepare(state: State, caller: Caller, body: JobRequest
             ) -> tuple[Job, None] | tuple[None, Job]:
    """Check the input and build the job; (job, None), or (None, the existing record) for
    the idempotent resubmission of a job id."""
    settings = state.settings
    if body.kind == "finetune":  # the base must be a catalog model
        entry = state.catalog.get(body.model)
        check_finetune(state, caller.owner, body.input)
    else:
        entry = resolve(state.catalog, state.user_models, caller.owner, body.model)
    max_pixels = pixel_limit(entry, settings.max_image_pixels, settings.input_scale)
    data = body.input.model_dump()
    data = check(body.kind, data, entry, max_pixels, upload_sizes(
        data, IMAGE_FIELDS, caller.owner, state.blobs))
    if body.timeout_s is not None and body.timeout_s > settings.max_job_timeout_s:
        raise InvalidInput(f"timeout_s is over the limit of {settings.max_job_timeout_s}")
    webhook_events = check_webhook(settings, body.webhook, body.webhook_events)
    fingerprint = ""  # only a client-chosen id can be sent again: only its job needs one
    if body.id is not None:
        fingerprint = request_hash(body.model_dump(mode="json", exclude={"id"}))
        existing = state.store.get(body.id)
        if existing is not None:
            return None, _resubmitted(existing, caller, fingerprint)
    job_id = body.id or new_id()
    data = stash_inputs(data, IMAGE_FIELDS, job_id, caller.owner, state.blobs,
                        settings.inline_image_bytes, max_pixels)
    return Job(
        id=job_id, owner=caller.owner, kind=body.kind, model=entry.name,
        queue=FINETUNE_QUEUE if body.kind == "finetune" else entry.queue,
        input=data, request_hash=fingerprint, created_at=now_iso(), timeout_s=body.timeout_s,
        webhook=body.webhook, **webhook_events, **state.lifecycle.admit(caller.owner,
                                                                         body.priority)), None


def _resubmitted(existing: Job, caller: Caller, fingerprint: str) -> Job:
    if existing.owner != caller.owner or existing.request_hash != fingerprint:
        raise Conflict(f"job id {existing.id!r} is taken by a different submission")
    return existing


def _usage_retry(retention_s: int) -> float:
    """Seconds until the oldest bucket of stored bytes is forgotten (at most)."""
    return float(usage_buckets(retention_s)[1])


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
    records = state.lifecycle.decorate([j.public() for j in jobs], jobs)
    return {"jobs": records, "next_cursor": next_cursor}


@router.get("/{job_id}", operation_id="getJob", response_model=JobRecord)
def get_job(job_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The job record (404 for an unknown id and for another owner's job); a queued job
    while no worker lives says so in ``waiting``."""
    job = owned_job(state, caller, job_id)
    record = state.lifecycle.decorate([job.public()], [job])[0]
    if record["status"] == "queued" and not state.store.workers():
        record["waiting"] = NO_WORKER
    return record


@router.post("/{job_id}/cancel", operation_id="cancelJob", response_model=JobRecord)
def cancel_job(job_id: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel a queued or running job; a finished job is returned unchanged."""
    job = owned_job(state, caller, job_id)
    if job.terminal:
        return job.public()
    return (state.store.cancel(job_id) or job).public()


_EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits that fit a 64-bit sequence number


def last_event_id(value: str | None) -> int:
    """The sequence number to resume after: 0 without the header; 400 for anything but a
    decimal number of at most 18 ASCII digits (``str.isdigit`` also takes '²')."""
    if value is None or not value.strip():
        return 0
    if not _EVENT_ID.fullmatch(value.strip()):
        raise BadRequest("Last-Event-ID must be the id of an event of this stream (a decimal "
                         "number)")
    return int(value.strip())


@router.get("/{job_id}/events", response_class=EventSourceResponse,
            operation_id="streamJobEvents", response_description=EVENTS_DESCRIPTION,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       **error_responses(400, 429)})
async def job_events(
    job_id: str,
    state: StateDep,
    caller: CallerDep,
    last_event_id_: Annotated[str | None, Header(
        alias="last-event-id", description="resume after this event id", examples=["3"])] = None,
) -> EventSourceResponse:
    """Server-sent events; reconnect with ``Last-Event-ID`` to resume after that event."""
    after = last_event_id(last_event_id_)
    job = await anyio.to_thread.run_sync(owned_job, state, caller, job_id)
    release = state.open_per_key.acquire(caller.key)
    ended = job.terminal
    return EventSourceResponse(_stream(state, job_id, after, ended, release), ping=15,
                               background=BackgroundTask(release))


RECHECK_S = 30.0  # how often an open stream reads its job's record (it may have expired)


async def _stream(state: State, job_id: str, after: int, ended: bool,
                  release: Callable[[], None]) -> AsyncIterator[ServerSentEvent]:
    """The job's events from the process's shared reader. A job that had ended when the
    stream opened ends it once the events after ``after`` are sent; otherwise the record
    is read again only every ``RECHECK_S`` or so (spread out, so that streams opened
    together do not read together)."""
    follower = state.hub.follow(job_id, after)
    try:
        while True:
            events = await follower.next(RECHECK_S * (1 + random.random() / 4))
            for event in events or ():
                yield ServerSentEvent(data=json.dumps(event.data), event=event.type,
                                      id=str(event.seq))
                if event.type == "status" and event.data.get("status") in TERMINAL:
                    return
            if events is not None:
                if ended and follower.caught_up and follower.queue.empty():
                    return  # the final event came before `after`
                continue
            job = await anyio.to_thread.run_sync(state.store.get, job_id)
            if job is None:
                return
            ended = job.terminal
            if ended and follower.caught_up and follower.queue.empty():
                tail = await anyio.to_thread.run_sync(state.store.events, job_id,
                                                      follower.after, 0.0)
                if not tail:
                    return
    except StoreUnavailable:  # the response has started: end it; the client resumes
        log.warning("an event stream of job %s ends: the store does not answer", job_id)
    finally:
        state.hub.unfollow(follower)
        release()


@router.get("/{job_id}/artifacts/{name}", response_class=Response,
            operation_id="getArtifact", response_description="the artifact's bytes",
            responses={200: {"content": {"image/png": {"schema": {"type": "string",
                                                                  "format": "binary"}}}},
                       307: {"description": "CONVOY_ARTIFACT_REDIRECT with S3: a presigned "
                             "URL of the bytes, valid CONVOY_PRESIGN_EXPIRY_S seconds"}})
def get_artifact(job_id: str, name: str, state: StateDep, caller: CallerDep) -> Response:
    """The bytes of one of the job's artifacts (as named in its output or events), streamed
    from the blob store."""
    owned_job(state, caller, job_id)
    headers = {"Cache-Control": "private, max-age=86400"}
    try:
        key = artifact_key(job_id, name)
    except ValueError:
        raise NotFound(f"job {job_id!r} has no artifact {name!r}") from None
    if state.settings.artifact_redirect:
        url = state.blobs.presign(key, state.settings.presign_expiry_s)
        if url is not None and state.blobs.head(key) is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    info = state.blobs.head(key)
    chunks = state.blobs.chunks(key) if info is not None else None
    if info is None or chunks is None:
        found = state.store.get_artifact(job_id, name)  # a record written before blobs
        if found is None:
            raise NotFound(f"job {job_id!r} has no artifact {name!r}")
        data, content_type = found
        return Response(data, media_type=content_type, headers=headers)
    return StreamingResponse(chunks, media_type=info.content_type, headers={
        **headers, "Content-Length": str(info.size), "ETag": f'"{info.sha256}"'})


@router.delete("/{job_id}", status_code=204, operation_id="deleteJob",
               response_class=Response, responses=error_responses(409))
def delete_job(job_id: str, state: StateDep, caller: CallerDep) -> Response:
    """Delete the caller's job: its record, events, artifacts and moved inputs. A queued
    or running job is canceled first (409 if a running job has not stopped within 10 s;
    try again)."""
    job = owned_job(state, caller, job_id)
    if not job.terminal:
        state.store.cancel(job_id)
        job = wait_terminal(state.store, job_id, DELETE_WAIT_S) or job
        if not job.terminal:
            raise Conflict(f"job {job_id!r} is still stopping; try again")
    delete_job_data(state.store, state.blobs, job)  # and refund its stored bytes
    return Response(status_code=204)


DELETE_WAIT_S = 10.0
