"""The job record and the outcome of a run: the two shapes a job takes on its way.

A ``Job`` is built by the submit route, persisted by the store, claimed by a worker and
shown by the API (``Job.public``) and in webhook payloads. It is a frozen dataclass, not a
pydantic model: the route validated its input already, and the store builds thousands of
them a second from its own rows, where validation would only cost time. A transition
gives a new record (``dataclasses.replace``), never an edited one.

Fields are of two sorts. Those fixed at submission are stored together (one JSON value);
those that change while the job lives (``metadata=_CHANGES`` below) are the store's columns or
hash fields, written by its transitions. Adding a fixed field is one line here; a
changing one is one line here and its mapping in each store.

An ``Outcome`` is what a run (or the API's cancel) asks ``JobStore.finish`` to record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


_CHANGES = {"changes": True}  # the metadata of a field that changes while the job lives


@dataclass(frozen=True, slots=True)
class Job:
    # -- fixed at submission
    id: str  # random (128 bits) or client-chosen
    owner: str  # the API key's owner
    kind: str  # classify, segment, reconstruct, sample, generate
    model: str  # the catalog name
    queue: str = "convoy"  # the Celery queue of the model
    input: dict[str, Any] = field(default_factory=dict)  # the validated input, images moved
    request_hash: str = ""  # fingerprint of the submission: an idempotent resubmission
    created_at: str = ""  # ISO 8601 UTC
    timeout_s: float | None = None  # the client's bound on the run (None: the default)
    priority: int = 0  # higher starts first on its queue
    webhook: str | None = None  # the URL that receives the job's events
    webhook_events: list[str] | None = None  # which: start, progress, output, completed
    # -- changes while it lives
    status: str = field(default="queued", metadata=_CHANGES)
    # the worker that holds it (running)
    worker: str | None = field(default=None, metadata=_CHANGES)
    # runs charged (started on a device)
    attempts: int = field(default=0, metadata=_CHANGES)
    # counts the claims; fences the writes of a run (see ``StaleClaim``)
    token: int = field(default=0, metadata=_CHANGES)
    # the token of the last claim whose run reached the device
    device: int | None = field(default=None, metadata=_CHANGES)
    started_at: str | None = field(default=None, metadata=_CHANGES)
    finished_at: str | None = field(default=None, metadata=_CHANGES)
    # {"step", "total"} of an iterative job while it runs
    progress: dict[str, int] | None = field(default=None, metadata=_CHANGES)
    output: dict[str, Any] | None = field(default=None, metadata=_CHANGES)
    # {"code", "message"} of a failed or canceled job
    error: dict[str, Any] | None = field(default=None, metadata=_CHANGES)
    cancel_requested: bool = field(default=False, metadata=_CHANGES)

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Job:
        """A record from stored fields; fields this version does not know are left out (a
        record written by a newer one), missing ones take their defaults."""
        return cls(**{k: v for k, v in data.items() if k in _NAMES})

    def fixed(self) -> dict[str, Any]:
        """The fields fixed at submission, as the store keeps them."""
        return {name: getattr(self, name) for name in FIXED}

    def changing(self) -> dict[str, Any]:
        """The fields that change while the job lives."""
        return {name: getattr(self, name) for name in MUTABLE}

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        """The record as the API (``GET /v1/jobs/{id}``) and webhook payloads show it:
        base64 images of the input replaced by their size."""
        jid = self.id
        return {
            "id": jid, "kind": self.kind, "model": self.model, "status": self.status,
            "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "progress": self.progress,
            "input": _summarise(self.input), "output": self.output, "error": self.error,
            "attempts": self.attempts, "priority": self.priority, "webhook": self.webhook,
            "webhook_events": self.webhook_events if self.webhook else None,
            "links": {"self": f"/v1/jobs/{jid}", "events": f"/v1/jobs/{jid}/events",
                      "cancel": f"/v1/jobs/{jid}/cancel"},
        }


_NAMES = frozenset(f.name for f in fields(Job))
MUTABLE = tuple(f.name for f in fields(Job) if f.metadata.get("changes"))
FIXED = tuple(f.name for f in fields(Job) if not f.metadata.get("changes"))


def _summarise(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 256:
        return f"<{len(value)} characters>"
    if isinstance(value, list):
        return [_summarise(v) for v in value]
    if isinstance(value, dict):
        return {k: _summarise(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class Outcome:
    """A terminal status to record. With ``worker``, it takes effect only while that worker
    holds the job (running), and with ``token`` only under that claim; without, only while
    the job is not terminal (``if_status``: only while it has that status)."""

    job_id: str
    status: str  # succeeded, failed or canceled
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {"code", "message"}
    worker: str | None = None
    token: int | None = None
    if_status: str | None = None

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """The events that end the job's stream: its output or error, then its status."""
        out: list[tuple[str, dict[str, Any]]] = []
        if self.output is not None:
            out.append(("output", self.output))
        if self.error is not None:
            out.append(("error", self.error))
        out.append(("status", {"status": self.status}))
        return out
