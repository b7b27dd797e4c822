"""Jobs for tests that drive a store directly, through the calls production makes."""

from __future__ import annotations

from typing import Any

from workers.store import Job, JobStore
from workers.store.base import now_iso

NO_LIMIT = 1_000_000


def job(jid: str, owner: str = "alice", kind: str = "classify", **fields: Any) -> Job:
    """A submitted job as the route builds it."""
    base: dict[str, Any] = {"model": "m", "input": {"top_k": 3}, "request_hash": "h",
                            "created_at": now_iso()}
    return Job(id=jid, owner=owner, kind=kind, **{**base, **fields})


def put(store: JobStore, *jobs: Job) -> None:
    """Accept ``jobs`` (as the submitter does, without its limits); each must be new."""
    for accepted in store.accept(list(jobs), NO_LIMIT, NO_LIMIT):
        assert isinstance(accepted, tuple) and accepted[1], accepted
