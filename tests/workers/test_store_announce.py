"""Transitions that carry their status events (one store round trip each on the job's hot
path), in both stores. Redis: database 11, as in test_store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.jobs import NO_LIMIT, job, put
from workers.store import Job, JobStore, Outcome
from workers.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def kinds(store: JobStore, job_id: str) -> list[tuple[int, str, dict]]:
    return [(e.seq, e.type, e.data) for e in store.events(job_id)]


def test_accept_announces_once_and_returns_the_stored_record(store: JobStore) -> None:
    ((record, created),) = store.accept([job("a")], NO_LIMIT, NO_LIMIT)
    assert created and record == store.get("a")
    ((again, created),) = store.accept([job("a")], NO_LIMIT, NO_LIMIT)
    assert not created and again == record
    assert kinds(store, "a") == [(1, "status", {"status": "queued"})]


def test_claim_announces_the_attempt_and_only_the_holder_finishes(store: JobStore) -> None:
    put(store, job("a"))
    (claimed,) = store.claim(["a"], "w1")
    assert isinstance(claimed, Job) and claimed.status == "running" and claimed.attempts == 1
    assert claimed == store.get("a")
    assert store.claim(["a"], "w2") == ["running"]
    assert store.finish([Outcome("a", "succeeded", output={"x": 1}, worker="w2")]) == [False]
    assert store.finish([Outcome("a", "succeeded", output={"x": 1}, worker="w1")]) == [True]
    done = store.get("a")
    assert done is not None and done.status == "succeeded" and done.output == {"x": 1}
    assert kinds(store, "a") == [
        (1, "status", {"status": "queued"}),
        (2, "status", {"status": "running", "attempt": 1}),
        (3, "output", {"x": 1}),
        (4, "status", {"status": "succeeded"}),
    ]
    assert store.running_jobs() == [] and store.count_queued("alice") == 0


def test_a_failure_announces_its_error_and_a_cancel_needs_no_worker(store: JobStore) -> None:
    put(store, job("a"), job("b"))
    store.claim(["a"], "w1")
    error = {"code": "gpu_oom", "message": "out of device memory"}
    assert store.finish([Outcome("a", "failed", error=error, worker="w1")]) == [True]
    assert [k[1:] for k in kinds(store, "a")[-2:]] == [("error", error),
                                                       ("status", {"status": "failed"})]
    assert store.finish([Outcome("b", "canceled"), Outcome("b", "canceled")]) == [True, False]
    assert [k[1] for k in kinds(store, "b")] == ["status", "status"]


def test_queued_counts_and_the_cancel_flag_in_the_record(store: JobStore) -> None:
    put(store, job("a"), job("b"), job("c", owner="bob"))
    assert (store.count_queued("alice"), store.count_queued("bob"), store.count_queued()) == (
        2, 1, 3)
    assert store.get("a").cancel_requested is False  # type: ignore[union-attr]
    (claimed,) = store.claim(["a"], "w1")
    assert isinstance(claimed, Job)
    assert store.cancel("a").cancel_requested is True  # type: ignore[union-attr]
    assert store.requeue({"a": "w1"}) == {"a"}
    (again,) = store.claim(["a"], "w1")
    assert isinstance(again, Job) and again.cancel_requested is True


def test_redis_claims_and_finishes_jobs_stored_without_an_owner_field(redis_url: str) -> None:
    """Records written before the owner had a field of its own still leave the queued sets."""
    from workers.store.redis import RedisStore

    store = RedisStore(redis_url)
    put(store, job("old", owner="carol"))
    store.r.hdel("convoy:job:old", "owner")
    assert store.count_queued("carol") == 1
    assert isinstance(store.claim(["old"], "w1")[0], Job)
    assert store.count_queued("carol") == 0
    assert store.finish([Outcome("old", "succeeded", output={}, worker="w1")]) == [True]
    assert store.running_jobs() == []
