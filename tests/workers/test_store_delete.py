"""Deleting a job from the store: its record, events and artifacts go at once, on SQLite
and on Redis (where no key of the job may be left behind); and the blob store's bytes
counted against their owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.jobs import job, put
from workers.store import Job, JobStore, Outcome
from workers.store.base import StaleClaim
from workers.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "s.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_delete_removes_record_events_and_listing(store: JobStore, state: str) -> None:
    put(store, job("gone"), job("kept"))
    if state != "queued":
        store.claim(["gone"], "w1")
    if state == "succeeded":
        store.finish([Outcome("gone", "succeeded", output={"x": 1}, worker="w1")])
    store.put_artifact("gone", "old.png", b"png", "image/png")
    assert store.delete("gone") is True
    assert store.get("gone") is None and store.events("gone") == []
    assert store.get_artifact("gone", "old.png") is None
    assert [j.id for j in store.list("alice", None, None, 10, None)[0]] == ["kept"]
    assert store.count_queued("alice") == 1 and store.count_queued() == 1
    assert "gone" not in [j for j, _ in store.running_jobs()]
    assert store.delete("gone") is False
    assert store.get("kept") is not None


def test_redis_keeps_no_key_of_a_deleted_job(redis_url: str) -> None:
    import redis

    from workers.store.redis import RedisStore

    store = RedisStore(redis_url)
    put(store, job("zz-gone"))
    store.append_event("zz-gone", "log", {"message": "hi"})
    store.put_artifact("zz-gone", "a.png", b"png", "image/png")
    store.delete("zz-gone")
    r = redis.Redis.from_url(redis_url)
    assert [k for k in r.keys("*") if b"zz-gone" in k] == []
    for key in r.keys("*"):
        if r.type(key) in (b"set", b"zset"):
            members = r.smembers(key) if r.type(key) == b"set" else r.zrange(key, 0, -1)
            assert b"zz-gone" not in members, key


def test_blobs_count_against_the_owners_stored_bytes_under_the_claim(store: JobStore) -> None:
    put(store, job("counted"))
    (claimed,) = store.claim(["counted"], "w1")
    assert isinstance(claimed, Job)
    before = store.stored_bytes("alice")
    store.count_blob("counted", 5000, token=claimed.token)
    assert store.stored_bytes("alice") == before + 5000
    store.count_owner_bytes("alice", 700)  # an upload
    assert store.stored_bytes("alice") == before + 5700 and store.stored_bytes("bob") == 0
    with pytest.raises(StaleClaim):  # a run whose claim is over counts (writes) nothing
        store.count_blob("counted", 10, token=claimed.token + 1)
    assert store.stored_bytes("alice") == before + 5700
