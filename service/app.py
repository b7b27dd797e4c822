"""The FastAPI app factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.blobs import BlobError, open_blobs
from core.celery_app import make_celery
from core.errors import ConvoyError, RateLimited, Unavailable
from core.images import DECODE_BUDGET
from core.outbox import open_outbox
from core.settings import Settings, get_settings
from core.store import JobStore, StoreFull, StoreUnavailable, open_store
from core.user_models import UserModels, open_user_models
from models.catalog import Catalog, ModelNotFound
from service import studio
from service.deps import State
from service.errors import bounded_errors
from service.lifecycle import Lifecycle
from service.lifecycle_metrics import LifecycleCollector
from service.limits import BodyLimit, OpenPerKey, RateLimiter
from service.metrics import REGISTRY, WorkerCollector
from service.openapi import install as install_openapi
from service.routes import health, jobs, models, uploads, usage, webhooks
from service.routes.jobs import SubmitFastPath
from service.streams import EventHub
from service.submitter import Submitter
from service.waiters import Waiters

log = logging.getLogger(__name__)
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "not_found", 409: "conflict",
               413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input",
               429: "rate_limited", 503: "unavailable"}
_collector: WorkerCollector | None = None
_current: dict[str, State] = {}


def _error(status: int, code: str, message: str, details: object = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}},
                        status_code=status, headers=headers)


def error_response(exc: Exception) -> JSONResponse | None:
    """The answer to an error of the service's own kinds (None: not one of them)."""
    if isinstance(exc, ConvoyError):
        headers = None
        if isinstance(exc, RateLimited | Unavailable):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return _error(exc.status, exc.code, exc.message, exc.details, headers)
    if isinstance(exc, ModelNotFound):
        return _error(404, "not_found", str(exc))
    if isinstance(exc, StoreFull):
        return _error(503, "unavailable", "the job store is full; try again later",
                      headers={"Retry-After": "10"})
    if isinstance(exc, StoreUnavailable):
        return _error(503, "unavailable", "the job store does not answer; try again shortly",
                      headers={"Retry-After": "2"})
    if isinstance(exc, BlobError):
        log.warning("blob store: %s", exc)
        return _error(503, "unavailable", "the blob store does not answer; try again shortly",
                      headers={"Retry-After": "2"})
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 400:  # a body that is not JSON at all: invalid input, as in API.md
            return _error(422, "invalid_input", str(exc.detail))
        code = _HTTP_CODES.get(exc.status_code, "invalid_input" if exc.status_code < 500
                               else "internal")
        return _error(exc.status_code, code, str(exc.detail))
    return None


def _install_handlers(app: FastAPI) -> None:
    async def own(_: Request, exc: Exception) -> JSONResponse:
        response = error_response(exc)
        assert response is not None, f"no answer for {type(exc).__name__}"
        return response

    for kind in (ConvoyError, ModelNotFound, StoreUnavailable, BlobError,
                 StarletteHTTPException):
        app.add_exception_handler(kind, own)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        max_errors = request.app.state.convoy.settings.max_error_details
        message, details = bounded_errors(errors, len(errors), max_errors, prefix=())
        return _error(422, "invalid_input", message, details)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, "internal", "internal error")


def _user_models(store: JobStore) -> UserModels:
    models = open_user_models(store)
    assert models is not None, "open_store makes a SQLite or Redis store"
    return models


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Event streams and waits hold no thread (service/streams.py); the threads run the
        # sync routes, store calls and image decodes (bounded by the decode budget).
        anyio.to_thread.current_default_thread_limiter().total_tokens = 128
        DECODE_BUDGET.configure(settings.decode_budget_pixels, settings.decode_wait_s)
        state.hub.start()
        state.waiters.start()
        yield
        state.waiters.stop()
        state.hub.stop()
        state.store.close()

    store = open_store(settings)
    celery = make_celery(settings)
    hub = EventHub(store)
    lifecycle = Lifecycle.open(settings, store)
    state = State(
        settings=settings,
        store=store,
        catalog=Catalog.load(settings.catalog),
        celery=celery,
        keys=settings.keys(),
        limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        waiters=Waiters(store, hub),
        submitter=Submitter.for_celery(store, celery, settings.max_queued_per_owner,
                                       settings.max_queue_depth, lifecycle.enqueued),
        outbox=open_outbox(store),
        lifecycle=lifecycle,
        hub=hub,
        open_per_key=OpenPerKey(settings.max_streams_per_key),
        blobs=open_blobs(settings),
        user_models=_user_models(store),
    )
    state.celery.conf.task_publish_retry_policy = {
        "max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
    _register_collector(state)
    app = FastAPI(
        title="convoy",
        version="1",
        description="A job service for convolutional models. See the Kinds section of the "
        "request body of POST /v1/jobs for each kind's input.",
        lifespan=lifespan,
        docs_url=None,  # served offline by service.studio
        redoc_url=None,
    )
    app.state.convoy = state
    app.add_middleware(SubmitFastPath, answer_error=error_response)  # within the body limit
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _install_handlers(app)
    app.include_router(jobs.router)
    app.include_router(uploads.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(webhooks.router)
    app.include_router(usage.router)
    install_openapi(app)
    studio.install(app)

    return app


def _register_collector(state: State) -> None:
    """One collector per process, reading the newest app's store."""
    global _collector
    _current["state"] = state
    if _collector is None:
        _collector = WorkerCollector(lambda: _current["state"].store if _current else None)
        REGISTRY.register(_collector)
        REGISTRY.register(LifecycleCollector(lambda: _current.get("state")))
