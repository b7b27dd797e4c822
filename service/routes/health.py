"""Liveness, readiness and metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.deps import StateDep
from service.metrics import render
from service.schemas import Health

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
NO_WORKER = "no live worker: jobs are accepted and wait in the queue until one starts"


@router.get("/healthz", operation_id="health", response_model=Health)
def healthz() -> dict[str, str]:
    """200 while the process runs (liveness)."""
    return {"status": "ok"}


class Readiness(BaseModel):
    ready: bool = Field(description="store and broker answer, and a worker was seen")
    checks: dict[str, Any] = Field(description="store, broker: 'ok' or 'down: why'; "
                                   "workers: how many are live",
                                   examples=[{"store": "ok", "broker": "ok", "workers": 1}])


@router.get("/readyz", operation_id="ready", response_model=Readiness, responses={503: {
    "model": Readiness, "description": "not ready: the store or broker does not answer, or no "
    "worker was seen", "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                   "required": True}}}})
def readyz(state: StateDep, request: Request) -> JSONResponse:
    """200 when the store and broker answer and a worker was seen within its heartbeat;
    else ``checks.why`` says what is missing when no worker lives (jobs are still accepted
    and queue).

    The route is open, so a failure is named by its kind only: the error's text (which
    holds the store's address) goes to the log."""
    checks: dict[str, Any] = {}
    try:
        state.store.ping()
        checks["store"] = "ok"
    except Exception as e:
        log.warning("readiness: the store does not answer: %s", e)
        checks["store"] = f"down: {type(e).__name__}"
    try:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as e:
        checks["broker"] = f"down: {type(e).__name__}"
    try:
        workers = state.store.workers() if checks["store"] == "ok" else []
        checks["workers"] = len(workers)
    except Exception:
        workers = []
        checks["workers"] = 0
    ready = checks["store"] == "ok" and checks["broker"] == "ok" and bool(workers)
    if checks["store"] == "ok" and not workers:
        child = getattr(request.app.state, "worker_child", None)
        checks["why"] = NO_WORKER + (f" ({child.note})" if child and child.note else "")
    headers = {} if ready else {"Retry-After": "2"}
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503,
                        headers=headers)


@router.get("/metrics", response_class=Response, operation_id="metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics() -> Response:
    """Prometheus text: jobs by kind, model and status, queue wait, run time, batches, workers."""
    return Response(render(), media_type="text/plain; version=0.0.4")
