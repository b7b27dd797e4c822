"""Giving back stored bytes: ``counted_bytes`` finds what a job counted and in which time
bucket; ``refund_owner_bytes`` takes it from those buckets (never below zero, never
reviving a forgotten bucket), on SQLite and on Redis; ``delete_job`` does both."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.jobs import job, put
from core.blobs import BlobInfo, FolderBlobs
from core.metering import counted_bytes, delete_job
from core.store import JobStore
from core.store.base import input_size, usage_buckets
from core.store.sqlite import SQLiteStore

DAY = 86400


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "s.db", retention_s=DAY)
    from core.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"), retention_s=DAY)


def test_a_refund_takes_from_its_buckets_only_and_never_below_zero(store: JobStore) -> None:
    store.count_owner_bytes("alice", 5000)
    store.count_owner_bytes("bob", 700)
    current = usage_buckets(DAY)[0][0]
    store.refund_owner_bytes("alice", {current: 1200})
    assert store.stored_bytes("alice") == 3800 and store.stored_bytes("bob") == 700
    store.refund_owner_bytes("alice", {current: 9999, current - 3: 50})  # clamped; absent
    assert store.stored_bytes("alice") == 0
    store.count_owner_bytes("alice", 10)
    assert store.stored_bytes("alice") == 10
    store.refund_owner_bytes("alice", {})
    assert store.stored_bytes("alice") == 10


def test_counted_bytes_are_the_input_and_the_written_blobs_by_bucket() -> None:
    width = usage_buckets(DAY)[1]
    submitted = 1767225600.0 + 7 * width - 1  # the last second of a bucket
    record = job("j", created_at="2026-01-01T06:59:59.000Z",
                 input={"image": {"blob": "jobs/j/inputs/image", "bytes": 900}})
    blobs = [BlobInfo("jobs/j/inputs/image", 900, "text/plain", "", modified=submitted),
             BlobInfo("jobs/j/preview-1.png", 300, "image/png", "", modified=submitted + 0.5),
             BlobInfo("jobs/j/image-0.png", 4000, "image/png", "", modified=submitted + 2)]
    bucket = int(submitted // width)
    # the moved input is counted with the input; the output in the next bucket
    assert counted_bytes(record, blobs, DAY) == {bucket: input_size(record) + 300,
                                                 bucket + 1: 4000}
    assert input_size(record) > 900


def test_delete_job_gives_back_what_the_job_counted(store: JobStore, tmp_path: Path) -> None:
    blobs = FolderBlobs(tmp_path / "blobs")
    store.count_owner_bytes("alice", 123)  # an upload of hers, which stays
    record = job("gone")
    put(store, record)
    for name, data in (("preview-1.png", b"p" * 300), ("image-0.png", b"i" * 4000)):
        store.count_blob("gone", len(data))
        blobs.put(f"jobs/gone/{name}", data, "image/png")
    assert store.stored_bytes("alice") == 123 + input_size(record) + 4300
    delete_job(store, blobs, record)
    assert store.get("gone") is None and blobs.entries("jobs/gone/") == []
    assert store.stored_bytes("alice") == 123
