"""The store interface and the pieces both implementations share."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")

# Fields of a job that change while it lives; everything else is fixed at submission.
MUTABLE = ("status", "worker", "attempts", "started_at", "finished_at", "progress", "output",
           "error", "cancel_requested")


class StoreUnavailable(RuntimeError):
    """The store's backend does not answer (Redis down, database locked for too long)."""


@dataclass(frozen=True)
class Event:
    seq: int  # 1, 2, ... per job
    type: str  # status, progress, preview, log, output, error
    data: dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _summarise(value: Any) -> Any:
    """Input as the record shows it: base64 images replaced by their size."""
    if isinstance(value, str) and len(value) > 256:
        return f"<{len(value)} characters>"
    if isinstance(value, list):
        return [_summarise(v) for v in value]
    if isinstance(value, dict):
        return {k: _summarise(v) for k, v in value.items()}
    return value


def public_record(job: dict[str, Any]) -> dict[str, Any]:
    """The job record of the API (``GET /v1/jobs/{id}``)."""
    jid = job["id"]
    return {
        "id": jid,
        "kind": job["kind"],
        "model": job["model"],
        "status": job["status"],
        "created_at": job["created_at"],
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "progress": job.get("progress"),
        "input": _summarise(job.get("input", {})),
        "output": job.get("output"),
        "error": job.get("error"),
        "attempts": job.get("attempts", 0),
        "links": {
            "self": f"/v1/jobs/{jid}",
            "events": f"/v1/jobs/{jid}/events",
            "cancel": f"/v1/jobs/{jid}/cancel",
        },
    }


class JobStore(ABC):
    """Jobs, their events and artifacts, cancel flags, and worker heartbeats.

    A job dict holds the fixed fields (id, owner, kind, model, queue, input, request_hash,
    timeout_s, created_at) and the MUTABLE ones. Transitions are atomic: ``claim`` moves a
    queued job to running for one worker; ``finish`` records the outcome only while that
    worker still holds the job; ``requeue`` hands a dead worker's job back.
    """

    retention_s: int

    # -- records -----------------------------------------------------------------------
    @abstractmethod
    def create(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert a queued job; if the id exists, return (existing, False)."""

    @abstractmethod
    def get(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def list(
        self, owner: str, status: str | None, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The owner's jobs, newest first, and the cursor of the next page."""

    @abstractmethod
    def count_queued(self, owner: str | None = None) -> int: ...

    # -- transitions ---------------------------------------------------------------------
    @abstractmethod
    def claim(self, job_id: str, worker: str) -> dict[str, Any] | None:
        """queued → running for ``worker`` (attempts + 1). None if not queued."""

    @abstractmethod
    def set_progress(self, job_id: str, step: int, total: int) -> None: ...

    @abstractmethod
    def finish(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Record a terminal status. With a worker: only while that worker holds the job
        (running); without: only while the job is not terminal. Returns the new job or None."""

    @abstractmethod
    def requeue(self, job_id: str, worker: str) -> bool:
        """running (held by ``worker``) → queued. False if the job moved on meanwhile."""

    @abstractmethod
    def request_cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    @abstractmethod
    def running_jobs(self) -> list[tuple[str, str]]:
        """(job id, worker) of every running job."""

    # -- events --------------------------------------------------------------------------
    @abstractmethod
    def append_event(self, job_id: str, type: str, data: dict[str, Any]) -> int:
        """Append to the job's event log; return the event's sequence number."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0, block_s: float = 0.0) -> list[Event]:
        """Events with seq > after; wait up to ``block_s`` for one if there are none."""

    # -- artifacts -----------------------------------------------------------------------
    @abstractmethod
    def put_artifact(self, job_id: str, name: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get_artifact(self, job_id: str, name: str) -> tuple[bytes, str] | None: ...

    @abstractmethod
    def artifact_names(self, job_id: str) -> list[str]: ...

    # -- workers -------------------------------------------------------------------------
    @abstractmethod
    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: float) -> None: ...

    @abstractmethod
    def workers(self) -> list[dict[str, Any]]:
        """Live workers (heartbeat within their ttl), each with its info."""

    @abstractmethod
    def remove_worker(self, worker: str) -> None: ...

    # -- upkeep --------------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""

    @abstractmethod
    def purge_expired(self) -> int:
        """Remove jobs (with their events and artifacts) past retention; return how many."""

    def close(self) -> None:  # noqa: B027 - optional
        pass

    # -- shared helpers ------------------------------------------------------------------
    def wait_terminal(self, job_id: str, timeout_s: float) -> dict[str, Any] | None:
        """Block until the job is terminal or the time is up; return the job."""
        deadline = time.monotonic() + timeout_s
        after = 0
        while True:
            job = self.get(job_id)
            if job is None or job["status"] in TERMINAL:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return job
            new = self.events(job_id, after, block_s=min(left, 1.0))
            if new:
                after = new[-1].seq
