"""The store interface and the pieces both implementations share."""

from __future__ import annotations

import json
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
# ``token`` counts the claims (it fences the writes of a run: see ``StaleClaim``);
# ``device`` is the token of the last claim whose run reached the device.
MUTABLE = ("status", "worker", "attempts", "started_at", "finished_at", "progress", "output",
           "error", "cancel_requested", "token", "device")


class StoreUnavailable(RuntimeError):
    """The store's backend does not answer (Redis down, database locked for too long)."""


class StoreFull(StoreUnavailable):
    """The store refuses writes for want of memory (Redis at ``maxmemory`` under
    ``noeviction``): like an outage, it passes once space is freed."""


class StaleClaim(Exception):
    """A write of a run whose claim is over: the job was handed to another run (its worker
    was taken for dead), or it ended. The run must stop and write nothing more."""


class QueueFull(Exception):
    """A submission over a limit: ``whose`` is 'owner' (the owner's queued jobs), 'all'
    (everyone's), 'bytes' (the bytes the owner stores, see ``JobStore.max_owner_bytes``)
    or 'size' (the job's input alone is over that bound)."""

    def __init__(self, whose: str) -> None:
        super().__init__(whose)
        self.whose = whose


@dataclass(frozen=True)
class Event:
    seq: int  # 1, 2, ... per job
    type: str  # status, progress, preview, log, output, error
    data: dict[str, Any]


QUEUED: tuple[str, dict[str, Any]] = ("status", {"status": "queued"})
USAGE_BUCKETS = 24  # an owner's stored bytes are counted in this many buckets of retention


def usage_buckets(retention_s: int, now: float | None = None) -> tuple[list[int], int]:
    """(the buckets that may still hold an owner's stored bytes, newest first; a bucket's
    width in seconds). Bytes are counted in the bucket of the time they were stored and
    forgotten with it, about when what they count expires."""
    width = max(60, retention_s // USAGE_BUCKETS)
    current = int((time.time() if now is None else now) // width)
    return [current - i for i in range(retention_s // width + 2)], width


def input_size(job: dict[str, Any]) -> int:
    """The bytes a job's submission stores: its input as JSON, and the images of its input
    moved to the blob store (``{"blob": key, "bytes": n}``; uploads were counted when
    uploaded)."""
    data = job.get("input", {})
    moved = sum(v.get("bytes", 0) for v in [*data.values(), *(data.get("interpolate_between")
                                                               or [])]
                if isinstance(v, dict) and "blob" in v)
    return len(json.dumps(data).encode()) + int(moved)


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
    # Bytes (inputs, previews, outputs) an owner may keep stored at once; 0: no bound.
    max_owner_bytes: int = 0
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
        if self.max_owner_bytes:
            size = input_size(job)
            if size > self.max_owner_bytes:
                raise QueueFull("size")
            if self.stored_bytes(job["owner"]) + size > self.max_owner_bytes:
                raise QueueFull("bytes")
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
    def stored_bytes(self, owner: str) -> int:
        """The bytes of inputs and artifacts the owner stored within the retention (about:
        counted by time buckets, see ``usage_buckets``)."""

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
        """queued → running for ``worker`` (attempts + 1, token + 1). None if not queued.

        The claimed job's ``token`` fences its run: the writes given it (``token=``) are
        refused with ``StaleClaim`` (or skipped, for the batch calls) once the job is no
        longer running under that token."""

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
    def set_progress(self, job_id: str, step: int, total: int, token: int | None = None
                     ) -> None: ...

    def progress_many(self, job_ids: list[str], step: int, total: int,
                      tokens: list[int] | None = None) -> None:
        """``set_progress`` and a ``progress`` event for each job (a batch's step); a job
        whose claim is not ``tokens``' any more is skipped."""
        for i, job_id in enumerate(job_ids):
            token = tokens[i] if tokens is not None else None
            try:
                self.set_progress(job_id, step, total, token=token)
                self.append_event(job_id, "progress", {"step": step, "total": total},
                                  token=token)
            except (KeyError, StaleClaim):
                pass  # expired meanwhile, or handed to another run

    def mark_on_device(self, claims: dict[str, int]) -> set[str]:
        """Record that the runs of ``claims`` (job id → token) reach the device now: a
        worker lost from here on is charged an attempt for them (``requeue``). Returns the
        ids whose claim is over (those runs must not start)."""
        stale = set()
        for job_id, token in claims.items():
            if not self._mark_one(job_id, token):
                stale.add(job_id)
        return stale

    @abstractmethod
    def _mark_one(self, job_id: str, token: int) -> bool: ...

    def stopped_among(self, claims: dict[str, int]) -> dict[str, str]:
        """Why each run of ``claims`` (job id → token) must stop, for those that must:
        'lost' (its claim is over) or 'canceled'. A batch asks once per step."""
        out = {}
        for job_id, token in claims.items():
            job = self.get(job_id)
            if job is None or job["status"] != "running" or job.get("token") != token:
                out[job_id] = "lost"
            elif job.get("cancel_requested"):
                out[job_id] = "canceled"
        return out

    @abstractmethod
    def finish(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
        token: int | None = None,
    ) -> dict[str, Any] | None:
        """Record a terminal status. With a worker: only while that worker holds the job
        (running) under ``token``, where given; without: only while the job is not
        terminal. Returns the new job or None."""

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
        token: int | None = None,
    ) -> dict[str, Any] | None:
        """``finish``, then append ``final_events`` (only if the finish took effect)."""
        job = self.finish(job_id, worker, status, output=output, error=error, token=token)
        if job is not None:
            for type_, data in self.final_events(status, output, error):
                self.append_event(job_id, type_, data)
        return job

    def finish_many(self, outcomes: list[tuple[str, str | None, str, dict[str, Any] | None,
                                               dict[str, Any] | None]],
                    tokens: list[int | None] | None = None) -> list[bool]:
        """``finish_and_announce`` each (job id, worker, status, output, error), under the
        claim of ``tokens`` where given; whether each took effect."""
        toks = tokens or [None] * len(outcomes)
        return [self.finish_and_announce(j, w, s, output=o, error=e, token=t) is not None
                for (j, w, s, o, e), t in zip(outcomes, toks, strict=True)]

    @abstractmethod
    def requeue(self, job_id: str, worker: str) -> bool:
        """running (held by ``worker``) → queued. False if the job moved on meanwhile.
        A run that never reached the device (``mark_on_device``) is not charged: the
        claim's attempt is given back."""

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
    def append_event(self, job_id: str, type: str, data: dict[str, Any],
                     token: int | None = None) -> int:
        """Append to the job's event log; return the event's sequence number. With a
        ``token``: only while the job runs under that claim (else ``StaleClaim``)."""

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
    def put_artifact(self, job_id: str, name: str, data: bytes, content_type: str,
                     token: int | None = None) -> None:
        """Store an artifact; with a ``token``, only while the job runs under that claim
        (else ``StaleClaim``)."""

    @abstractmethod
    def get_artifact(self, job_id: str, name: str) -> tuple[bytes, str] | None: ...

    @abstractmethod
    def artifact_names(self, job_id: str) -> list[str]: ...

    # -- stored bytes of the blob store ----------------------------------------------------
    def count_blob(self, job_id: str, size: int, token: int | None = None) -> None:
        """Count ``size`` bytes a job writes to the blob store against its owner's stored
        bytes; with a ``token``, only while the job runs under that claim (else
        ``StaleClaim``)."""
        raise NotImplementedError(f"{type(self).__name__} does not count blobs")

    def count_owner_bytes(self, owner: str, size: int) -> None:
        """Count ``size`` bytes the owner stored (an upload) against their stored bytes."""
        raise NotImplementedError(f"{type(self).__name__} does not count blobs")

    def refund_owner_bytes(self, owner: str, counted: dict[int, int]) -> None:
        """Give back bytes the owner deleted before they expired: ``counted`` maps each
        bucket (see ``usage_buckets``) to the bytes counted in it. A bucket never drops
        below zero, and one already forgotten is left alone."""
        raise NotImplementedError(f"{type(self).__name__} does not count blobs")

    # -- deletion ------------------------------------------------------------------------
    def delete(self, job_id: str) -> bool:
        """Remove the job's record, events and artifacts at once; whether it existed."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete jobs")

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
