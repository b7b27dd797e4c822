"""The store interface and the pieces both implementations share.

The interface is narrow and batch-first: one method per transition of a job (accept,
claim, progress, mark_on_device, finish, requeue, cancel), each taking every job of a
batch at once and writing each job's record and its events in one atomic step; then the
reads, the event log, artifacts, stored-byte counts and worker heartbeats. Records are
``core.job.Job``; outcomes ``core.job.Outcome``.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.job import STATUSES, TERMINAL, Job, Outcome

__all__ = ["STATUSES", "TERMINAL", "Event", "Job", "JobStore", "Outcome", "QueueFull",
           "StaleClaim", "StoreFull", "StoreUnavailable"]


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
# What ``accept`` answers for each job: (its record, whether this call created it), or the
# limit it is over.
Accepted = tuple[Job, bool] | QueueFull
USAGE_BUCKETS = 24  # an owner's stored bytes are counted in this many buckets of retention


def usage_buckets(retention_s: int, now: float | None = None) -> tuple[list[int], int]:
    """(the buckets that may still hold an owner's stored bytes, newest first; a bucket's
    width in seconds). Bytes are counted in the bucket of the time they were stored and
    forgotten with it, about when what they count expires."""
    width = max(60, retention_s // USAGE_BUCKETS)
    current = int((time.time() if now is None else now) // width)
    return [current - i for i in range(retention_s // width + 2)], width


def input_size(job: Job) -> int:
    """The bytes a job's submission stores: its input as JSON, and the images of its input
    moved to the blob store (``{"blob": key, "bytes": n}``; uploads were counted when
    uploaded)."""
    data = job.input
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


class JobStore(ABC):
    """Jobs, their events and artifacts, cancel flags, and worker heartbeats.

    Every transition is atomic per job and takes effect only from the state it leaves:
    ``claim`` moves a queued job to running for one worker; ``finish`` records an outcome
    only while the job is not terminal (and, for a run's outcome, while that run's claim
    holds); ``requeue`` hands a lost worker's job back. Each appends the events that tell
    it (the status, then an outcome's output or error) in the same step.

    A claim's ``token`` fences its run: the writes given it are refused with
    ``StaleClaim`` (or skipped, for the batch calls) once the job is no longer running
    under that claim.
    """

    retention_s: int
    # Bytes (inputs, previews, outputs) an owner may keep stored at once; 0: no bound.
    max_owner_bytes: int = 0
    # Whether ``accept`` can push a broker message in the same step as it records the job.
    pushes_messages: bool = False
    # Whether ``listen_finished`` announces finished jobs (else waiters follow events).
    announces_finishes: bool = False

    # -- transitions -----------------------------------------------------------------------
    @abstractmethod
    def accept(self, jobs: list[Job], max_mine: int, max_all: int,
               messages: list[tuple[str, str]] | None = None) -> list[Accepted]:
        """Record each submitted job (queued, with its first event ``QUEUED``) unless the
        owner has ``max_mine`` queued jobs, everyone ``max_all``, or the owner's stored
        bytes would pass ``max_owner_bytes`` (a QueueFull in its place). A taken id is
        answered with the record that holds it: (existing, False). ``messages`` (broker
        list, message) are pushed in the same atomic step where ``pushes_messages``;
        elsewhere sending them is the caller's part."""

    @abstractmethod
    def claim(self, job_ids: list[str], worker: str) -> list[Job | str]:
        """queued → running for ``worker`` (attempts + 1, token + 1), with the status
        event of the start. For each id: the claimed job, or why not (the job's status,
        or 'missing')."""

    @abstractmethod
    def progress(self, claims: dict[str, int], step: int, total: int) -> None:
        """A batch's step: the progress of each run of ``claims`` (job id → token) and its
        ``progress`` event; a job whose claim is over is skipped."""

    @abstractmethod
    def mark_on_device(self, claims: dict[str, int]) -> set[str]:
        """Record that the runs of ``claims`` (job id → token) reach the device now: a
        worker lost from here on is charged an attempt for them (``requeue``). Returns the
        ids whose claim is over (those runs must not start)."""

    def start_on_device(self, claims: dict[str, int]) -> dict[str, str]:
        """``stopped_among`` and ``mark_on_device`` at once, where the store can do both
        in one step: why each run of ``claims`` must not start ('lost' or 'canceled'); the
        others are marked as on the device."""
        stopped = self.stopped_among(claims)
        lost = self.mark_on_device({j: t for j, t in claims.items() if j not in stopped})
        return {**stopped, **dict.fromkeys(lost, "lost")}

    @abstractmethod
    def finish(self, outcomes: list[Outcome]) -> list[bool]:
        """Record each outcome (see ``Outcome`` for when one takes effect) with its final
        events (``Outcome.events``); whether each took effect."""

    @abstractmethod
    def requeue(self, held: dict[str, str]) -> set[str]:
        """running → queued for the jobs of ``held`` (job id → the worker that holds it),
        with a ``queued`` status event; returns those handed back (the others moved on
        meanwhile). A run that never reached the device (``mark_on_device``) is not
        charged: the claim's attempt is given back."""

    @abstractmethod
    def cancel(self, job_id: str) -> Job | None:
        """Ask the job to stop: a queued one ends ``canceled`` at once, a running one's
        run stops at its next step (``stopped_among``). Returns the record after, or None
        for an unknown id."""

    # -- reads -------------------------------------------------------------------------------
    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def list(
        self, owner: str, status: str | None, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        """The owner's jobs, newest first, and the cursor of the next page."""

    @abstractmethod
    def count_queued(self, owner: str | None = None) -> int: ...

    @abstractmethod
    def stored_bytes(self, owner: str) -> int:
        """The bytes of inputs and artifacts the owner stored within the retention (about:
        counted by time buckets, see ``usage_buckets``)."""

    @abstractmethod
    def stopped_among(self, claims: dict[str, int]) -> dict[str, str]:
        """Why each run of ``claims`` (job id → token) must stop, for those that must:
        'lost' (its claim is over) or 'canceled'. A batch asks once per step."""

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
        """Append to the job's event log; return the event's sequence number (KeyError for
        an unknown job). With a ``token``: only while the job runs under that claim (else
        ``StaleClaim``)."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0, block_s: float = 0.0) -> list[Event]:
        """Events with seq > after; wait up to ``block_s`` for one if there are none."""

    @abstractmethod
    def events_many(self, after: dict[str, int], block_s: float = 0.0
                    ) -> dict[str, list[Event]]:
        """For each job id in ``after``, its events with seq > its value (jobs with none are
        left out); wait up to ``block_s`` for any. The one read an API process makes for all
        the event streams it serves."""

    # -- artifacts and stored bytes --------------------------------------------------------
    @abstractmethod
    def put_artifact(self, job_id: str, name: str, data: bytes, content_type: str,
                     token: int | None = None) -> None:
        """Store an artifact; with a ``token``, only while the job runs under that claim
        (else ``StaleClaim``)."""

    @abstractmethod
    def get_artifact(self, job_id: str, name: str) -> tuple[bytes, str] | None: ...

    @abstractmethod
    def artifact_names(self, job_id: str) -> list[str]: ...

    @abstractmethod
    def count_blob(self, job_id: str, size: int, token: int | None = None) -> None:
        """Count ``size`` bytes a job writes to the blob store against its owner's stored
        bytes; with a ``token``, only while the job runs under that claim (else
        ``StaleClaim``)."""

    @abstractmethod
    def count_owner_bytes(self, owner: str, size: int) -> None:
        """Count ``size`` bytes the owner stored (an upload) against their stored bytes."""

    @abstractmethod
    def refund_owner_bytes(self, owner: str, counted: dict[int, int]) -> None:
        """Give back bytes the owner deleted before they expired: ``counted`` maps each
        bucket (see ``usage_buckets``) to the bytes counted in it. A bucket never drops
        below zero, and one already forgotten is left alone."""

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
    def delete(self, job_id: str) -> bool:
        """Remove the job's record, events and artifacts at once; whether it existed."""

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
        finish (where ``announces_finishes``; the fields are ``Job.changing``'s; finishes
        that come together come in one call)."""
        raise NotImplementedError(f"{type(self).__name__} does not announce finishes")
