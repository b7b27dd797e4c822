"""Transitions that carry their status events (one store round trip each on the job's hot
path), in both stores. Redis: database 11, as in test_store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.test_store import job
from workers.store import JobStore
from workers.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def kinds(store: JobStore, job_id: str) -> list[tuple[int, str, dict]]:
    return [(e.seq, e.type, e.data) for e in store.events(job_id)]


def test_create_announces_once_and_returns_the_stored_record(store: JobStore) -> None:
    record, created = store.create_and_announce(job("a"))
    assert created and record == store.get("a")
    again, created = store.create_and_announce(job("a"))
    assert not created and again["id"] == "a"
    assert kinds(store, "a") == [(1, "status", {"status": "queued"})]


def test_claim_announces_the_attempt_and_only_the_holder_finishes(store: JobStore) -> None:
    store.create_and_announce(job("a"))
    claimed = store.claim_and_announce("a", "w1")
    assert claimed is not None and claimed["status"] == "running" and claimed["attempts"] == 1
    assert claimed == store.get("a")
    assert store.claim_and_announce("a", "w2") is None
    assert store.finish_and_announce("a", "w2", "succeeded", output={"x": 1}) is None
    done = store.finish_and_announce("a", "w1", "succeeded", output={"x": 1})
    assert done is not None and done["status"] == "succeeded" and done["output"] == {"x": 1}
    assert done == store.get("a")
    assert kinds(store, "a") == [
        (1, "status", {"status": "queued"}),
        (2, "status", {"status": "running", "attempt": 1}),
        (3, "output", {"x": 1}),
        (4, "status", {"status": "succeeded"}),
    ]
    assert store.running_jobs() == [] and store.queued_counts("alice") == (0, 0)


def test_a_failure_announces_its_error_and_a_cancel_needs_no_worker(store: JobStore) -> None:
    store.create_and_announce(job("a"))
    store.claim("a", "w1")
    error = {"code": "gpu_oom", "message": "out of device memory"}
    assert store.finish_and_announce("a", "w1", "failed", error=error) is not None
    assert [k[1:] for k in kinds(store, "a")[-2:]] == [("error", error),
                                                       ("status", {"status": "failed"})]
    store.create_and_announce(job("b"))
    assert store.finish_and_announce("b", None, "canceled") is not None
    assert store.finish_and_announce("b", None, "canceled") is None  # terminal stays terminal
    assert [k[1] for k in kinds(store, "b")] == ["status", "status"]


def test_queued_counts_and_the_cancel_flag_in_the_record(store: JobStore) -> None:
    store.create(job("a"))
    store.create(job("b"))
    store.create(job("c", owner="bob"))
    assert store.queued_counts("alice") == (2, 3)
    assert store.queued_counts("bob") == (1, 3)
    assert store.get("a")["cancel_requested"] is not True  # type: ignore[index]
    store.request_cancel("a")
    assert store.get("a")["cancel_requested"] is True  # type: ignore[index]
    claimed = store.claim("a", "w1")
    assert claimed is not None and claimed["cancel_requested"] is True


def test_redis_claims_and_finishes_jobs_stored_without_an_owner_field(redis_url: str) -> None:
    """Records written before the owner had a field of its own still leave the queued sets."""
    from workers.store.redis import RedisStore

    store = RedisStore(redis_url)
    store.create(job("old", owner="carol"))
    store.r.hdel("convoy:job:old", "owner")
    assert store.queued_counts("carol") == (1, 1)
    assert store.claim("old", "w1") is not None
    assert store.queued_counts("carol") == (0, 0)
    assert store.finish_and_announce("old", "w1", "succeeded", output={}) is not None
    assert store.running_jobs() == []
