"""The embedded store: one SQLite file under the data dir, shared by the API and workers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workers.store.base import (
    MUTABLE,
    QUEUED,
    TERMINAL,
    Event,
    JobStore,
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
        self._db().executescript(SCHEMA)

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
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    @staticmethod
    def _job(row: sqlite3.Row | tuple[Any, ...] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        fixed, mutable = json.loads(row[0]), json.loads(row[1])
        return {**fixed, **mutable}

    def _row(self, db: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
        cur = db.execute("SELECT fixed, mutable FROM jobs WHERE id = ?", (job_id,))
        return self._job(cur.fetchone())

    def _write(self, db: sqlite3.Connection, job: dict[str, Any]) -> None:
        mutable = {k: job.get(k) for k in MUTABLE}
        db.execute(
            "UPDATE jobs SET status = ?, worker = ?, mutable = ? WHERE id = ?",
            (job["status"], job.get("worker"), json.dumps(mutable), job["id"]),
        )

    # -- records ---------------------------------------------------------------------------
    def create(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        with self._tx() as db:
            return self._create(db, job)

    def create_and_announce(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        with self._tx() as db:
            record, created = self._create(db, job)
            if created:
                self._append(db, job["id"], *QUEUED)
            return record, created

    def _create(self, db: sqlite3.Connection, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        existing = self._row(db, job["id"])
        if existing is not None:
            return existing, False
        fixed = json.dumps({k: v for k, v in job.items() if k not in MUTABLE})
        mutable = json.dumps({k: job.get(k) for k in MUTABLE})
        db.execute(
            "INSERT INTO jobs (id, owner, kind, status, fixed, mutable, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job["id"], job["owner"], job["kind"], job["status"], fixed, mutable,
             time.time() + self.retention_s),
        )
        self._count_bytes(db, job["owner"], input_size(job))
        created = self._job((fixed, mutable))
        assert created is not None
        return created, True

    def _count_bytes(self, db: sqlite3.Connection, owner: str, size: int) -> None:
        bucket = usage_buckets(self.retention_s)[0][0]
        db.execute("INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (owner, bucket)"
                   " DO UPDATE SET bytes = bytes + excluded.bytes", (owner, bucket, size))

    def stored_bytes(self, owner: str) -> int:
        oldest = usage_buckets(self.retention_s)[0][-1]
        row = self._db().execute("SELECT sum(bytes) FROM usage WHERE owner = ? AND bucket >= ?",
                                 (owner, oldest)).fetchone()
        return int(row[0] or 0)

    def get(self, job_id: str) -> dict[str, Any] | None:
        try:
            cur = self._db().execute("SELECT fixed, mutable FROM jobs WHERE id = ?", (job_id,))
            return self._job(cur.fetchone())
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def list(
        self, owner: str, status: str | None, kind: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
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
        rows = self._db().execute(sql, args).fetchall()
        jobs = [self._job(r) for r in rows[:limit]]
        next_cursor = str(rows[limit - 1][2]) if len(rows) > limit else None
        return [j for j in jobs if j is not None], next_cursor

    def count_queued(self, owner: str | None = None) -> int:
        if owner is None:
            row = self._db().execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()
        else:
            row = self._db().execute(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND owner = ?", (owner,)
            ).fetchone()
        return int(row[0])

    # -- transitions -------------------------------------------------------------------------
    def claim(self, job_id: str, worker: str) -> dict[str, Any] | None:
        with self._tx() as db:
            return self._claim(db, job_id, worker)

    def claim_and_announce(self, job_id: str, worker: str) -> dict[str, Any] | None:
        with self._tx() as db:
            job = self._claim(db, job_id, worker)
            if job is not None:
                self._append(db, job_id, *running_event(job["attempts"]))
            return job

    def _claim(self, db: sqlite3.Connection, job_id: str, worker: str) -> dict[str, Any] | None:
        job = self._row(db, job_id)
        if job is None or job["status"] != "queued":
            return None
        job.update(status="running", worker=worker, attempts=(job.get("attempts") or 0) + 1,
                   token=(job.get("token") or 0) + 1, started_at=now_iso())
        self._write(db, job)
        return job

    @staticmethod
    def _holds(job: dict[str, Any] | None, token: int | None) -> bool:
        """Whether a write under ``token`` (None: unfenced) may touch the job."""
        return job is not None and (token is None or (
            job["status"] == "running" and job.get("token") == token))

    def _fence(self, db: sqlite3.Connection, job_id: str, token: int | None) -> None:
        if token is not None and not self._holds(self._row(db, job_id), token):
            raise StaleClaim(job_id)

    def set_progress(self, job_id: str, step: int, total: int, token: int | None = None
                     ) -> None:
        with self._tx() as db:
            job = self._row(db, job_id)
            if job is not None and job["status"] == "running":
                if not self._holds(job, token):
                    raise StaleClaim(job_id)
                job["progress"] = {"step": step, "total": total}
                self._write(db, job)

    def progress_many(self, job_ids: list[str], step: int, total: int,
                      tokens: list[int] | None = None) -> None:
        data = {"step": step, "total": total}
        with self._tx() as db:  # a batch's step in one transaction
            for i, job_id in enumerate(job_ids):
                job = self._row(db, job_id)
                if job is None or job["status"] != "running" or not self._holds(
                        job, tokens[i] if tokens is not None else None):
                    continue
                job["progress"] = data
                self._write(db, job)
                self._append(db, job_id, "progress", data)

    def mark_on_device(self, claims: dict[str, int]) -> set[str]:
        stale = set()
        with self._tx() as db:  # a batch in one transaction
            for job_id, token in claims.items():
                job = self._row(db, job_id)
                if job is None or not self._holds(job, token):
                    stale.add(job_id)
                    continue
                job["device"] = token
                self._write(db, job)
        return stale

    def _mark_one(self, job_id: str, token: int) -> bool:
        return not self.mark_on_device({job_id: token})

    def stopped_among(self, claims: dict[str, int]) -> dict[str, str]:
        if not claims:
            return {}
        ids = list(claims)
        rows = self._db().execute(
            f"SELECT id, status, cancel, json_extract(mutable, '$.token') FROM jobs WHERE id IN"
            f" ({','.join('?' * len(ids))})", ids).fetchall()
        found = {r[0]: r[1:] for r in rows}
        out = {}
        for job_id, token in claims.items():
            status, cancel, held = found.get(job_id, (None, 0, None))
            if status != "running" or held != token:
                out[job_id] = "lost"
            elif cancel:
                out[job_id] = "canceled"
        return out

    def finish(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
        token: int | None = None,
    ) -> dict[str, Any] | None:
        with self._tx() as db:
            return self._finish(db, job_id, worker, status, output, error, token)

    def finish_and_announce(
        self, job_id: str, worker: str | None, status: str,
        output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
        token: int | None = None,
    ) -> dict[str, Any] | None:
        with self._tx() as db:  # the outcome and its events in one transaction
            job = self._finish(db, job_id, worker, status, output, error, token)
            if job is not None:
                for type_, data in self.final_events(status, output, error):
                    self._append(db, job_id, type_, data)
            return job

    def _finish(self, db: sqlite3.Connection, job_id: str, worker: str | None, status: str,
                output: dict[str, Any] | None, error: dict[str, Any] | None,
                token: int | None = None) -> dict[str, Any] | None:
        job = self._row(db, job_id)
        if job is None or job["status"] in TERMINAL or not self._holds(job, token):
            return None
        if worker is not None and (job["status"] != "running" or job.get("worker") != worker):
            return None
        job.update(status=status, output=output, error=error, finished_at=now_iso())
        self._write(db, job)
        return job

    def requeue(self, job_id: str, worker: str) -> bool:
        with self._tx() as db:
            job = self._row(db, job_id)
            if job is None or job["status"] != "running" or job.get("worker") != worker:
                return False
            if job.get("device") != job.get("token"):  # held, never on the device: uncharged
                job["attempts"] = max(0, (job.get("attempts") or 1) - 1)
            job.update(status="queued", worker=None, progress=None)
            self._write(db, job)
            return True

    def request_cancel(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET cancel = 1, mutable = json_set(mutable, "
                       "'$.cancel_requested', json('true')) WHERE id = ?", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        row = self._db().execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def stale_queued(self, older_than_s: float) -> list[tuple[str, str]]:
        rows = self._db().execute("SELECT id, fixed FROM jobs WHERE status = 'queued'").fetchall()
        out = []
        for job_id, fixed in rows:
            job = json.loads(fixed)
            if age_s(job.get("created_at")) > older_than_s:
                out.append((job_id, job.get("queue") or "convoy"))
        return out

    def running_jobs(self) -> list[tuple[str, str]]:
        rows = self._db().execute("SELECT id, worker FROM jobs WHERE status = 'running'").fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- events ------------------------------------------------------------------------------
    def append_event(self, job_id: str, type: str, data: dict[str, Any],
                     token: int | None = None) -> int:
        with self._tx() as db:
            self._fence(db, job_id, token)
            return self._append(db, job_id, type, data)

    @staticmethod
    def _append(db: sqlite3.Connection, job_id: str, type: str, data: dict[str, Any]) -> int:
        db.execute("UPDATE jobs SET seq = seq + 1 WHERE id = ?", (job_id,))
        row = db.execute("SELECT seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        seq = int(row[0])
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (job_id, seq, type, json.dumps(data)))
        return seq

    def events(self, job_id: str, after: int = 0, block_s: float = 0.0) -> list[Event]:
        deadline = time.monotonic() + block_s
        while True:
            try:
                rows = self._db().execute(
                    "SELECT seq, type, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq",
                    (job_id, after),
                ).fetchall()
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"sqlite: {e}") from e
            if rows or time.monotonic() >= deadline:
                return [Event(int(s), t, json.loads(d)) for s, t, d in rows]
            time.sleep(self.poll_s)

    def events_many(self, after: dict[str, int], block_s: float = 0.0
                    ) -> dict[str, list[Event]]:
        """One query for all the jobs (a join on their cursors), polled every 20 ms."""
        cursors = json.dumps(after)
        deadline = time.monotonic() + block_s
        while True:
            try:
                rows = self._db().execute(
                    "SELECT e.job_id, e.seq, e.type, e.data FROM json_each(?) AS c "
                    "JOIN events AS e ON e.job_id = c.key AND e.seq > c.value "
                    "ORDER BY e.job_id, e.seq", (cursors,)).fetchall()
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"sqlite: {e}") from e
            if rows or time.monotonic() >= deadline:
                found: dict[str, list[Event]] = {}
                for job_id, seq, type_, data in rows:
                    found.setdefault(job_id, []).append(Event(int(seq), type_, json.loads(data)))
                return found
            time.sleep(max(self.poll_s, 0.02))

    # -- artifacts ---------------------------------------------------------------------------
    def put_artifact(self, job_id: str, name: str, data: bytes, content_type: str,
                     token: int | None = None) -> None:
        with self._tx() as db:
            self._fence(db, job_id, token)
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)",
                       (job_id, name, content_type, data))
            row = db.execute("SELECT owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                self._count_bytes(db, row[0], len(data))

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

    def get_artifact(self, job_id: str, name: str) -> tuple[bytes, str] | None:
        row = self._db().execute(
            "SELECT data, content_type FROM artifacts WHERE job_id = ? AND name = ?",
            (job_id, name),
        ).fetchone()
        return (bytes(row[0]), row[1]) if row else None

    def artifact_names(self, job_id: str) -> list[str]:
        rows = self._db().execute(
            "SELECT name FROM artifacts WHERE job_id = ? ORDER BY name", (job_id,)).fetchall()
        return [r[0] for r in rows]

    # -- workers -----------------------------------------------------------------------------
    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: float) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO workers VALUES (?, ?, ?)",
                       (worker, json.dumps(info), time.time() + ttl_s))

    def workers(self) -> list[dict[str, Any]]:
        rows = self._db().execute(
            "SELECT id, info FROM workers WHERE expires_at > ?", (time.time(),)).fetchall()
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
