"""The store interface and the pieces both implementations share."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
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


class QueueFull(Exception):
    """A submission over a queue limit: ``whose`` is 'owner' (the owner's queued jobs) or
    'all' (everyone's)."""

    def __init__(self, whose: str) -> None:
        super().__init__(whose)
        self.whose = whose


@dataclass(frozen=True)
class Event:
    seq: int  # 1, 2, ... per job
    type: str  # status, progress, preview, log, output, error
    data: dict[str, Any]


QUEUED: tuple[str, dict[str, Any]] = ("status", {"status": "queued"})


def running_event(attempt: int) -> tuple[str, dict[str, Any]]:
    return "status", {"status": "running", "attempt": attempt}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age_s(iso: str | None) -> float:
    """Seconds since a timestamp of ``now_iso`` (0 for none or a malformed one)."""
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(str(iso))).total_seconds()
    except ValueError:
        return 0.0


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
        "priority": job.get("priority", 0),
        "webhook": job.get("webhook"),
        "webhook_events": job.get("webhook_events") if job.get("webhook") else None,
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
    # Whether ``accept`` can push a broker message in the same step as it records the job.
    pushes_messages: bool = False
    # Whether ``listen_finished`` announces finished jobs (else waiters follow events).
    announces_finishes: bool = False

    # -- records -----------------------------------------------------------------------
    @abstractmethod
    def create(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Insert a queued job; if the id exists, return (existing, False)."""

    def create_and_announce(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """``create``, and if it created the job, append its first event (``QUEUED``, seq 1)."""
        record, created = self.create(job)
        if created:
            self.append_event(job["id"], *QUEUED)
        return record, created

    def accept(self, job: dict[str, Any], max_mine: int, max_all: int
               ) -> tuple[dict[str, Any], bool]:
        """``create_and_announce`` a submitted job unless the owner already has ``max_mine``
        queued jobs or everyone ``max_all`` (``QueueFull``); a taken id is answered first
        with its record: (existing, False)."""
        existing = self.get(job["id"])
        if existing is not None:
            return existing, False
        mine, everyone = self.queued_counts(job["owner"])
        if mine >= max_mine:
            raise QueueFull("owner")
        if everyone >= max_all:
            raise QueueFull("all")
        return self.create_and_announce(job)

    def accept_many(self, jobs: list[dict[str, Any]], max_mine: int, max_all: int,
                    messages: list[tuple[str, str]] | None = None
                    ) -> list[tuple[dict[str, Any], bool] | QueueFull]:
        """``accept`` each job (a QueueFull in place of those over a limit). ``messages``
        (broker list, message) are pushed in the same atomic step where
        ``pushes_messages``; elsewhere sending them is the caller's part."""
        if messages:
            raise NotImplementedError(f"{type(self).__name__} does not push messages")
        out: list[tuple[dict[str, Any], bool] | QueueFull] = []
        for job in jobs:
            try:
                out.append(self.accept(job, max_mine, max_all))
            except QueueFull as e:
                out.append(e)
        return out

    @abstractmethod
    def get(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def list(
        self, owner: str, status: str | None, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The owner's jobs, newest first, and the cursor of the next page."""

    @abstractmethod
    def count_queued(self, owner: str | None = None) -> int: ...

    def queued_counts(self, owner: str) -> tuple[int, int]:
        """(the owner's queued jobs, all queued jobs)."""
        return self.count_queued(owner), self.count_queued()

    # -- transitions ---------------------------------------------------------------------
    @abstractmethod
    def claim(self, job_id: str, worker: str) -> dict[str, Any] | None:
        """queued → running for ``worker`` (attempts + 1). None if not queued."""

    def claim_and_announce(self, job_id: str, worker: str) -> dict[str, Any] | None:
        """``claim``, then append the status event of the start (``running_event``)."""
        job = self.claim(job_id, worker)
        if job is not None:
            self.append_event(job_id, *running_event(job["attempts"]))
        return job

    def try_claim(self, job_id: str, worker: str) -> tuple[dict[str, Any] | None, str]:
        """``claim_and_announce``: (the claimed job, 'running'), or (None, why not): the
        job's status, or 'missing'."""
        job = self.claim_and_announce(job_id, worker)
        if job is not None:
            return job, "running"
        current = self.get(job_id)
        return None, "missing" if current is None else current["status"]

    def try_claim_many(self, job_ids: list[str], worker: str
                       ) -> list[tuple[dict[str, Any] | None, str]]:
        """``try_claim`` each job."""
        return [self.try_claim(j, worker) for j in job_ids]

    @abstractmethod
    def set_progress(self, job_id: str, step: int, total: int) -> None: ...

    def progress_many(self, job_ids: list[str], step: int, total: int) -> None:
        """``set_progress`` and a ``progress`` event for each job (a batch's step)."""
        for job_id in job_ids:
            self.set_progress(job_id, step, total)
            try:
                self.append_event(job_id, "progress", {"step": step, "total": total})
            except KeyError:
                pass  # expired meanwhile

    @abstractmethod
    def finish(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Record a terminal status. With a worker: only while that worker holds the job
        (running); without: only while the job is not terminal. Returns the new job or None."""

    @staticmethod
    def final_events(status: str, output: dict[str, Any] | None,
                     error: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
        """The events that end a job's stream: its output or error, then its status."""
        events: list[tuple[str, dict[str, Any]]] = []
        if output is not None:
            events.append(("output", output))
        if error is not None:
            events.append(("error", error))
        events.append(("status", {"status": status}))
        return events

    def finish_and_announce(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """``finish``, then append ``final_events`` (only if the finish took effect)."""
        job = self.finish(job_id, worker, status, output=output, error=error)
        if job is not None:
            for type_, data in self.final_events(status, output, error):
                self.append_event(job_id, type_, data)
        return job

    def finish_many(self, outcomes: list[tuple[str, str | None, str, dict[str, Any] | None,
                                               dict[str, Any] | None]]) -> list[bool]:
        """``finish_and_announce`` each (job id, worker, status, output, error); whether
        each took effect."""
        return [self.finish_and_announce(j, w, s, output=o, error=e) is not None
                for j, w, s, o, e in outcomes]

    @abstractmethod
    def requeue(self, job_id: str, worker: str) -> bool:
        """running (held by ``worker``) → queued. False if the job moved on meanwhile."""

    @abstractmethod
    def request_cancel(self, job_id: str) -> None: ...

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    def canceled_among(self, job_ids: Iterable[str]) -> set[str]:
        """The ids among ``job_ids`` whose cancel was requested (a batch asks once)."""
        return {j for j in job_ids if self.cancel_requested(j)}

    @abstractmethod
    def stale_queued(self, older_than_s: float) -> list[tuple[str, str]]:
        """(job id, queue) of the jobs queued and created more than ``older_than_s`` ago."""

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

    def events_many(self, after: dict[str, int], block_s: float = 0.0
                    ) -> dict[str, list[Event]]:
        """For each job id in ``after``, its events with seq > its value (jobs with none are
        left out); wait up to ``block_s`` for any. The one read an API process makes for all
        the event streams it serves."""
        deadline = time.monotonic() + block_s
        while True:
            found = {j: new for j, seq in after.items() if (new := self.events(j, seq))}
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

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

    def close(self) -> None:
        pass

    def listen_finished(self, on_finished: Callable[[list[tuple[str, dict[str, Any]]]], None],
                        stop: threading.Event) -> None:
        """Until ``stop``: call ``on_finished([(job_id, changed fields), ...])`` as jobs
        finish (where ``announces_finishes``; the fields are the MUTABLE ones of the
        record; finishes that come together come in one call)."""
        raise NotImplementedError(f"{type(self).__name__} does not announce finishes")

    # -- shared helpers ------------------------------------------------------------------
    def wait_terminal(self, job_id: str, timeout_s: float, after: int = 0
                      ) -> dict[str, Any] | None:
        """Block until the job is terminal or the time is up; return the job.

        It follows the job's events (from ``after``, a sequence number the caller has seen)
        and reads the record again only when a final status event arrives or none came for
        a second."""
        deadline = time.monotonic() + timeout_s
        job = self.get(job_id)
        while job is not None and job["status"] not in TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                return job
            new = self.events(job_id, after, block_s=min(left, 1.0))
            if new:
                after = new[-1].seq
            if not new or any(e.type == "status" and e.data.get("status") in TERMINAL
                              for e in new):
                job = self.get(job_id)
        return job
