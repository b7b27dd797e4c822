"""The embedded store: one SQLite file under the data dir, shared by the API and workers.

A job is one row: its fixed fields as one JSON value, the changing ones as another (and
the status, worker and cancel flag in columns of their own, for the queries). Every read
and write maps SQLite's operational errors (a locked or unreadable database) to
``StoreUnavailable``, as the Redis store does with connection errors.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.store.base import (
    QUEUED,
    Accepted,
    Event,
    Job,
    JobStore,
    Outcome,
    QueueFull,
    StaleClaim,
    StoreUnavailable,
    age_s,
    input_size,
    now_iso,
    running_event,
    usage_buckets,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    worker TEXT,
    fixed TEXT NOT NULL,
    mutable TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, n);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS artifacts (
    job_id TEXT NOT NULL, name TEXT NOT NULL, content_type TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, info TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    owner TEXT NOT NULL, bucket INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (owner, bucket)
);
"""


class SQLiteStore(JobStore):
    def __init__(self, path: Path, retention_s: int = 86400, poll_s: float = 0.01,
                 max_owner_bytes: int = 0) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_owner_bytes = max_owner_bytes
        self.poll_s = poll_s
        self._local = threading.local()
        try:
            self._db().executescript(SCHEMA)
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    # -- plumbing --------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: writers queue for the lock)."""
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def _read(self, sql: str, args: Any = ()) -> list[Any]:
        """The rows of one query outside a transaction."""
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    @staticmethod
    def _job(fixed: str, mutable: str) -> Job:
        return Job.from_fields({**json.loads(fixed), **json.loads(mutable)})

    def _row(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute("SELECT fixed, mutable FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(*row)

    @staticmethod
    def _write(db: sqlite3.Connection, job: Job) -> None:
        db.execute("UPDATE jobs SET status = ?, worker = ?, mutable = ? WHERE id = ?",
                   (job.status, job.worker, json.dumps(job.changing()), job.id))

    @staticmethod
    def _holds(job: Job | None, token: int | None) -> bool:
        """Whether a write under ``token`` (None: unfenced) may touch the job."""
        return job is not None and (token is None or (
            job.status == "running" and job.token == token))

    def _fence(self, db: sqlite3.Connection, job_id: str, token: int | None) -> None:
        if token is not None and not self._holds(self._row(db, job_id), token):
            raise StaleClaim(job_id)

    def _count_bytes(self, db: sqlite3.Connection, owner: str, size: int) -> None:
        bucket = usage_buckets(self.retention_s)[0][0]
        db.execute("INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (owner, bucket)"
                   " DO UPDATE SET bytes = bytes + excluded.bytes", (owner, bucket, size))

    # -- transitions -------------------------------------------------------------------------
    def accept(self, jobs: list[Job], max_mine: int, max_all: int,
               messages: list[tuple[str, str]] | None = None) -> list[Accepted]:
        if messages:
            raise NotImplementedError("the SQLite store does not push messages")
        with self._tx() as db:  # the group in one transaction
            return [self._accept(db, job, max_mine, max_all) for job in jobs]

    def _accept(self, db: sqlite3.Connection, job: Job, max_mine: int, max_all: int
                ) -> Accepted:
        existing = self._row(db, job.id)
        if existing is not None:
            return existing, False
        mine, everyone = db.execute(
            "SELECT count(*) FILTER (WHERE owner = ?), count(*) FROM jobs"
            " WHERE status = 'queued'", (job.owner,)).fetchone()
        if mine >= max_mine:
            return QueueFull("owner")
        if everyone >= max_all:
            return QueueFull("all")
        size = input_size(job)
        if self.max_owner_bytes:
            if size > self.max_owner_bytes:
                return QueueFull("size")
            if self._stored_bytes(db, job.owner) + size > self.max_owner_bytes:
                return QueueFull("bytes")
        job = replace(job, status="queued")
        db.execute(
            "INSERT INTO jobs (id, owner, kind, status, fixed, mutable, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.owner, job.kind, job.status, json.dumps(job.fixed()),
             json.dumps(job.changing()), time.time() + self.retention_s))
        self._count_bytes(db, job.owner, size)
        self._append(db, job.id, *QUEUED)
        return job, True

    def claim(self, job_ids: list[str], worker: str) -> list[Job | str]:
        out: list[Job | str] = []
        with self._tx() as db:
            for job_id in job_ids:
                job = self._row(db, job_id)
                if job is None or job.status != "queued":
                    out.append("missing" if job is None else job.status)
                    continue
                job = replace(job, status="running", worker=worker, attempts=job.attempts + 1,
                              token=job.token + 1, started_at=now_iso())
                self._write(db, job)
                self._append(db, job_id, *running_event(job.attempts))
                out.append(job)
        return out

    def progress(self, claims: dict[str, int], step: int, total: int) -> None:
        data = {"step": step, "total": total}
        with self._tx() as db:  # a batch's step in one transaction
            for job_id, token in claims.items():
                job = self._row(db, job_id)
                if not self._holds(job, token):
                    continue
                assert job is not None
                self._write(db, replace(job, progress=data))
                self._append(db, job_id, "progress", data)

    def mark_on_device(self, claims: dict[str, int]) -> set[str]:
        stale = set()
        with self._tx() as db:  # a batch in one transaction
            for job_id, token in claims.items():
                job = self._row(db, job_id)
                if job is None or not self._holds(job, token):
                    stale.add(job_id)
                    continue
                self._write(db, replace(job, device=token))
        return stale

    def finish(self, outcomes: list[Outcome]) -> list[bool]:
        with self._tx() as db:  # the outcomes and their events in one transaction
            return [self._finish(db, o) for o in outcomes]

    def _finish(self, db: sqlite3.Connection, o: Outcome) -> bool:
        job = self._row(db, o.job_id)
        if job is None or job.terminal or not self._holds(job, o.token):
            return False
        if o.worker is not None and (job.status != "running" or job.worker != o.worker):
            return False
        if o.if_status is not None and job.status != o.if_status:
            return False
        self._write(db, replace(job, status=o.status, output=o.output, error=o.error,
                                finished_at=now_iso()))
        for type_, data in o.events():
            self._append(db, o.job_id, type_, data)
        return True

    def requeue(self, held: dict[str, str]) -> set[str]:
        handed = set()
        with self._tx() as db:
            for job_id, worker in held.items():
                job = self._row(db, job_id)
                if job is None or job.status != "running" or job.worker != worker:
                    continue
                attempts = job.attempts
                if job.device != job.token:  # held, never on the device: uncharged
                    attempts = max(0, attempts - 1)
                self._write(db, replace(job, status="queued", worker=None, progress=None,
                                        attempts=attempts))
                self._append(db, job_id, *QUEUED)
                handed.add(job_id)
        return handed

    def cancel(self, job_id: str) -> Job | None:
        with self._tx() as db:
            job = self._row(db, job_id)
            if job is None:
                return None
            if not job.terminal:
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
                self._write(db, replace(job, cancel_requested=True))
                self._finish(db, Outcome(job_id, "canceled", if_status="queued"))
            return self._row(db, job_id)

    # -- reads -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        rows = self._read("SELECT fixed, mutable FROM jobs WHERE id = ?", (job_id,))
        return self._job(*rows[0]) if rows else None

    def list(
        self, owner: str, status: str | None, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        sql = "SELECT fixed, mutable, n FROM jobs WHERE owner = ?"
        args: list[Any] = [owner]
        if status:
            sql += " AND status = ?"
            args.append(status)
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        if cursor:
            sql += " AND n < ?"
            args.append(int(cursor))
        sql += " ORDER BY n DESC LIMIT ?"
        args.append(limit + 1)
        rows = self._read(sql, args)
        next_cursor = str(rows[limit - 1][2]) if len(rows) > limit else None
        return [self._job(f, m) for f, m, _ in rows[:limit]], next_cursor

    def count_queued(self, owner: str | None = None) -> int:
        if owner is None:
            rows = self._read("SELECT count(*) FROM jobs WHERE status = 'queued'")
        else:
            rows = self._read("SELECT count(*) FROM jobs WHERE status = 'queued' AND owner = ?",
                              (owner,))
        return int(rows[0][0])

    def stored_bytes(self, owner: str) -> int:
        try:
            return self._stored_bytes(self._db(), owner)
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def _stored_bytes(self, db: sqlite3.Connection, owner: str) -> int:
        oldest = usage_buckets(self.retention_s)[0][-1]
        row = db.execute("SELECT sum(bytes) FROM usage WHERE owner = ? AND bucket >= ?",
                         (owner, oldest)).fetchone()
        return int(row[0] or 0)

    def stopped_among(self, claims: dict[str, int]) -> dict[str, str]:
        if not claims:
            return {}
        ids = list(claims)
        rows = self._read(
            f"SELECT id, status, cancel, json_extract(mutable, '$.token') FROM jobs WHERE id IN"
            f" ({','.join('?' * len(ids))})", ids)
        found = {r[0]: r[1:] for r in rows}
        out = {}
        for job_id, token in claims.items():
            status, cancel, held = found.get(job_id, (None, 0, None))
            if status != "running" or held != token:
                out[job_id] = "lost"
            elif cancel:
                out[job_id] = "canceled"
        return out

    def stale_queued(self, older_than_s: float) -> list[tuple[str, str]]:
        out = []
        for job_id, fixed in self._read("SELECT id, fixed FROM jobs WHERE status = 'queued'"):
            job = json.loads(fixed)
            if age_s(job.get("created_at")) > older_than_s:
                out.append((job_id, job.get("queue") or "convoy"))
        return out

    def running_jobs(self) -> list[tuple[str, str]]:
        return [(r[0], r[1])
                for r in self._read("SELECT id, worker FROM jobs WHERE status = 'running'")]

    # -- events ------------------------------------------------------------------------------
    def append_event(self, job_id: str, type: str, data: dict[str, Any],
                     token: int | None = None) -> int:
        with self._tx() as db:
            self._fence(db, job_id, token)
            return self._append(db, job_id, type, data)

    @staticmethod
    def _append(db: sqlite3.Connection, job_id: str, type: str, data: dict[str, Any]) -> int:
        row = db.execute("UPDATE jobs SET seq = seq + 1 WHERE id = ? RETURNING seq",
                         (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        seq = int(row[0])
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (job_id, seq, type, json.dumps(data)))
        return seq

    def events(self, job_id: str, after: int = 0, block_s: float = 0.0) -> list[Event]:
        deadline = time.monotonic() + block_s
        while True:
            rows = self._read(
                "SELECT seq, type, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                (job_id, after))
            if rows or time.monotonic() >= deadline:
                return [Event(int(s), t, json.loads(d)) for s, t, d in rows]
            time.sleep(self.poll_s)

    def events_many(self, after: dict[str, int], block_s: float = 0.0
                    ) -> dict[str, list[Event]]:
        """One query for all the jobs (a join on their cursors), polled every 20 ms."""
        cursors = json.dumps(after)
        deadline = time.monotonic() + block_s
        while True:
            rows = self._read(
                "SELECT e.job_id, e.seq, e.type, e.data FROM json_each(?) AS c "
                "JOIN events AS e ON e.job_id = c.key AND e.seq > c.value "
                "ORDER BY e.job_id, e.seq", (cursors,))
            if rows or time.monotonic() >= deadline:
                found: dict[str, list[Event]] = {}
                for job_id, seq, type_, data in rows:
                    found.setdefault(job_id, []).append(Event(int(seq), type_, json.loads(data)))
                return found
            time.sleep(max(self.poll_s, 0.02))

    # -- artifacts and stored bytes ------------------------------------------------------------
    def put_artifact(self, job_id: str, name: str, data: bytes, content_type: str,
                     token: int | None = None) -> None:
        with self._tx() as db:
            self._fence(db, job_id, token)
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)",
                       (job_id, name, content_type, data))
            row = db.execute("SELECT owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                self._count_bytes(db, row[0], len(data))

    def get_artifact(self, job_id: str, name: str) -> tuple[bytes, str] | None:
        rows = self._read("SELECT data, content_type FROM artifacts WHERE job_id = ? AND name = ?",
                          (job_id, name))
        return (bytes(rows[0][0]), rows[0][1]) if rows else None

    def artifact_names(self, job_id: str) -> list[str]:
        return [r[0] for r in self._read(
            "SELECT name FROM artifacts WHERE job_id = ? ORDER BY name", (job_id,))]

    def count_blob(self, job_id: str, size: int, token: int | None = None) -> None:
        with self._tx() as db:
            self._fence(db, job_id, token)
            row = db.execute("SELECT owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                self._count_bytes(db, row[0], size)

    def count_owner_bytes(self, owner: str, size: int) -> None:
        with self._tx() as db:
            self._count_bytes(db, owner, size)

    def refund_owner_bytes(self, owner: str, counted: dict[int, int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE usage SET bytes = max(0, bytes - ?) WHERE owner = ? AND "
                           "bucket = ?", [(n, owner, b) for b, n in counted.items()])

    # -- workers -----------------------------------------------------------------------------
    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO workers VALUES (?, ?, ?)",
                       (worker, json.dumps(info), time.time() + ttl_s))

    def workers(self) -> list[dict[str, Any]]:
        rows = self._read("SELECT id, info FROM workers WHERE expires_at > ?", (time.time(),))
        return [{"id": r[0], **json.loads(r[1])} for r in rows]

    def remove_worker(self, worker: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker,))

    # -- upkeep ------------------------------------------------------------------------------
    def ping(self) -> None:
        try:
            self._db().execute("SELECT 1").fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def delete(self, job_id: str) -> bool:
        with self._tx() as db:
            for table in ("events", "artifacts"):
                db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def purge_expired(self) -> int:
        now = time.time()
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE expires_at <= ?", (now,))]
            for table in ("events", "artifacts"):
                db.executemany(f"DELETE FROM {table} WHERE job_id = ?", [(i,) for i in ids])
            db.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,))
            db.execute("DELETE FROM workers WHERE expires_at <= ?", (now - 3600,))
            db.execute("DELETE FROM usage WHERE bucket < ?",
                       (usage_buckets(self.retention_s, now)[0][-1],))
        return len(ids)
