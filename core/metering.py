"""Device-seconds: who used how much of the accelerators.

The batcher times every forward pass (or sampling loop) and knows its members, so each
member is charged its share of that time, weighted by the images it asked for (``n``); the
shares of a batch add up to its measured time. A worker keeps a job's charges while it runs
and writes them before recording the outcome, in one step: per job (shown on the job
record), per owner and period (``GET /v1/usage`` and quotas) and per owner and model (the
``convoy_device_seconds`` counter, which lives in the store so that it never goes backwards
when a worker exits).

Stored bytes are the other meter (counted by the store in time buckets, see
``usage_buckets``): ``delete_job`` and ``refund_upload`` give an owner back what a deleted
job or upload counted, in the buckets it was counted in, so that deleting makes room at
once rather than when those bytes would have expired.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from core.blobs import BlobInfo, BlobStore, job_prefix, upload_key
from core.job import Job
from core.sqlite_local import ThreadLocalDB
from core.store.base import JobStore, StoreUnavailable, input_size, usage_buckets
from core.store.redis_errors import redis_call

Charge = tuple[str, str, str, float]  # job id, owner, model, seconds
SENT_WITH = "job"  # an upload's metadata: the job whose submission carried it


def shares(weights: Sequence[float], seconds: float) -> list[float]:
    """``seconds`` split in proportion to ``weights`` (equal shares if all are 0)."""
    total = sum(weights)
    if total <= 0:
        return [seconds / len(weights)] * len(weights) if weights else []
    return [seconds * w / total for w in weights]


def period_start(now: float, period_s: int) -> int:
    """The start (epoch seconds) of the period that holds ``now``."""
    return int(now // period_s * period_s)


class Meter(ABC):
    def __init__(self, period_s: int) -> None:
        self.period_s = period_s

    @abstractmethod
    def charge(self, charges: Iterable[Charge]) -> None: ...

    @abstractmethod
    def job_seconds(self, job_ids: list[str]) -> dict[str, float]: ...

    @abstractmethod
    def owner_seconds(self, owner: str, period: int) -> dict[str, float]:
        """Model → device-seconds of the owner in the period that starts at ``period``."""

    @abstractmethod
    def totals(self) -> dict[tuple[str, str], float]:
        """(owner, model) → device-seconds since the store began."""

    def spent(self, owner: str) -> float:
        """The owner's device-seconds in the current period."""
        return sum(self.owner_seconds(owner, period_start(time.time(), self.period_s)).values())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_jobs (job_id TEXT PRIMARY KEY, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage_owners (owner TEXT NOT NULL, model TEXT NOT NULL,
    period INTEGER NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (owner, model, period));
"""


class SQLiteMeter(Meter):
    def __init__(self, path: Any, period_s: int) -> None:
        super().__init__(period_s)
        self.path = path
        self._db = ThreadLocalDB(path, _SCHEMA)

    def charge(self, charges: Iterable[Charge]) -> None:
        period = period_start(time.time(), self.period_s)
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            for job_id, owner, model, seconds in charges:
                db.execute("INSERT INTO usage_jobs VALUES (?, ?) ON CONFLICT (job_id) DO "
                           "UPDATE SET seconds = seconds + excluded.seconds", (job_id, seconds))
                db.execute("INSERT INTO usage_owners VALUES (?, ?, ?, ?) ON CONFLICT DO "
                           "UPDATE SET seconds = seconds + excluded.seconds",
                           (owner, model, period, seconds))
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreUnavailable(f"sqlite: {e}") from e

    def job_seconds(self, job_ids: list[str]) -> dict[str, float]:
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        rows = self._db().execute(f"SELECT job_id, seconds FROM usage_jobs WHERE job_id IN "
                                  f"({marks})", job_ids).fetchall()
        return {r[0]: float(r[1]) for r in rows}

    def owner_seconds(self, owner: str, period: int) -> dict[str, float]:
        rows = self._db().execute("SELECT model, seconds FROM usage_owners WHERE owner = ? AND "
                                  "period = ?", (owner, period)).fetchall()
        return {r[0]: float(r[1]) for r in rows}

    def totals(self) -> dict[tuple[str, str], float]:
        rows = self._db().execute("SELECT owner, model, sum(seconds) FROM usage_owners "
                                  "GROUP BY owner, model").fetchall()
        return {(r[0], r[1]): float(r[2]) for r in rows}


_P = "convoy:usage:"
# A group of charges in one step (a script runs whole). ARGV: key prefix, period, a job
# key's ttl, an owner-period key's ttl, the number of jobs, then (job id, seconds) for each
# job, then (owner, model, seconds) for each owner and model, the seconds summed.
_CHARGE = """
local P, period, job_ttl, owner_ttl, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
for i = 6, 5 + 2 * n, 2 do
  local key = P .. 'job:' .. ARGV[i]
  redis.call('INCRBYFLOAT', key, ARGV[i + 1])
  redis.call('EXPIRE', key, job_ttl)
end
for i = 6 + 2 * n, #ARGV, 3 do
  local key = P .. 'owner:' .. ARGV[i] .. ':' .. period
  redis.call('HINCRBYFLOAT', key, ARGV[i + 1], ARGV[i + 2])
  redis.call('EXPIRE', key, owner_ttl)
  redis.call('HINCRBYFLOAT', P .. 'totals', ARGV[i] .. '|' .. ARGV[i + 1], ARGV[i + 2])
end
return 1
"""


class RedisMeter(Meter):
    def __init__(self, client: Any, period_s: int, retention_s: int) -> None:
        super().__init__(period_s)
        self.r = client
        self.retention_s = retention_s
        self._charge = client.register_script(_CHARGE)

    def charge(self, charges: Iterable[Charge]) -> None:
        """All of the charges in one script call (all or none), the owners' and models'
        sums added once each."""
        jobs: list[Any] = []
        by_model: dict[tuple[str, str], float] = {}
        for job_id, owner, model, seconds in charges:
            jobs += [job_id, seconds]
            by_model[(owner, model)] = by_model.get((owner, model), 0.0) + seconds
        if not jobs:
            return
        args: list[Any] = [_P, period_start(time.time(), self.period_s), self.retention_s,
                           max(self.retention_s, 2 * self.period_s), len(jobs) // 2, *jobs]
        for (owner, model), seconds in by_model.items():
            args += [owner, model, seconds]
        redis_call(lambda: self._charge(args=args))

    def job_seconds(self, job_ids: list[str]) -> dict[str, float]:
        if not job_ids:
            return {}
        values = redis_call(self.r.mget, [f"{_P}job:{j}" for j in job_ids])
        return {j: float(v) for j, v in zip(job_ids, values, strict=True) if v is not None}

    def owner_seconds(self, owner: str, period: int) -> dict[str, float]:
        raw = redis_call(self.r.hgetall, f"{_P}owner:{owner}:{period}")
        return {k.decode(): float(v) for k, v in raw.items()}

    def totals(self) -> dict[tuple[str, str], float]:
        raw = redis_call(self.r.hgetall, f"{_P}totals")
        out: dict[tuple[str, str], float] = {}
        for k, v in raw.items():
            owner, _, model = k.decode().rpartition("|")
            out[(owner, model)] = float(v)
        return out


def open_meter(store: JobStore, period_s: int) -> Meter | None:
    """The meter beside a store (None for a store of another kind)."""
    from core.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteMeter(store.path, period_s)
    from core.store.redis import RedisStore

    if isinstance(store, RedisStore):
        return RedisMeter(store.r, period_s, store.retention_s)
    return None


def _refs(job: Job, kind: str) -> set[str]:
    """What the job's input images name by ``kind``: 'blob' (inputs moved to the blob
    store, counted with the input) or 'upload'."""
    data = job.input
    values = [*data.values(), *(data.get("interpolate_between") or [])]
    return {v[kind] for v in values if isinstance(v, dict) and kind in v}


def counted_bytes(job: Job, blobs: Iterable[BlobInfo], retention_s: int
                  ) -> dict[int, int]:
    """What a job counted against its owner's stored bytes, by bucket: its input at
    submission (the bucket of ``created_at``) and each blob its worker wrote (the bucket
    of the blob's time; the worker counts a blob just before writing it)."""
    width = usage_buckets(retention_s)[1]
    counted: dict[int, int] = {}

    def add(when: float, size: int) -> None:
        bucket = int(when // width)
        counted[bucket] = counted.get(bucket, 0) + size

    if job.created_at:
        add(datetime.fromisoformat(job.created_at).timestamp(), input_size(job))
    moved = _refs(job, "blob")
    for info in blobs:
        if info.key not in moved:
            add(info.modified, info.size)
    return counted


def delete_job(store: JobStore, blobs: BlobStore, job: Job) -> None:
    """Delete a finished job's blobs, record and the uploads sent with it (a multipart
    submission's files), and give its owner back the bytes they counted. The blobs are
    listed and deleted before the record and once more after it (a preview written while
    the job stopped). Uploads the job merely names stay."""
    prefix = job_prefix(job.id)
    gone = blobs.entries(prefix)
    blobs.delete([b.key for b in gone])
    store.delete(job.id)
    late = blobs.entries(prefix)
    blobs.delete([b.key for b in late])
    store.refund_owner_bytes(job.owner, counted_bytes(job, [*gone, *late], store.retention_s))
    for upload_id in sorted(_refs(job, "upload")):
        info = blobs.head(upload_key(upload_id))
        if (info is not None and info.meta.get("owner") == job.owner
                and info.meta.get(SENT_WITH) == job.id and blobs.delete([info.key])):
            refund_upload(store, job.owner, info)


def refund_upload(store: JobStore, owner: str, info: BlobInfo) -> None:
    """Give the owner back a deleted upload's bytes (counted when it was uploaded)."""
    width = usage_buckets(store.retention_s)[1]
    store.refund_owner_bytes(owner, {int(info.modified // width): info.size})
