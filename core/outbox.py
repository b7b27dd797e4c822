"""The webhook outbox: deliveries that must reach a client's URL, kept in the job store's
backend so that they survive a restart of every process.

Three things live here, on SQLite (embedded) and on Redis (distributed):

- the *watch list*: jobs with a webhook and how far their event log has been turned into
  deliveries (a cursor). A job is watched before it is created, so no event of it can be
  missed; the event log itself is the durable record of what happened, written in the same
  atomic step as each transition.
- the *deliveries*: one per (job, event) with a fixed id (the ``webhook-id`` of every
  retry) and a fixed body. Enqueueing is idempotent by id, so two senders that read the
  same events, or one that crashed before moving the cursor, add nothing twice.
- the owners' *signing secrets*, made on first use.

A sender claims due deliveries by pushing their due time a lease ahead; one that dies while
sending leaves the delivery to be claimed again when the lease runs out (at-least-once: the
receiver deduplicates by ``webhook-id``).
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.sqlite_local import ThreadLocalDB
from core.store.base import JobStore, StoreUnavailable
from core.store.redis_errors import redis_call


@dataclass
class Delivery:
    id: str  # the webhook-id, the same on every attempt
    job_id: str
    event: str  # start, progress, output, completed
    url: str
    owner: str
    body: str  # the JSON body, fixed at enqueue
    attempts: int = 0
    first_at: float = 0.0  # when it was enqueued
    state: str = "pending"  # pending, delivered, failed


def new_secret() -> str:
    """A Standard Webhooks secret: 'whsec_' and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Outbox(ABC):
    @abstractmethod
    def watch(self, job_id: str) -> None:
        """Follow the job's events from the start (no-op if already watched)."""

    @abstractmethod
    def watched(self, limit: int = 500) -> list[tuple[str, int, float]]:
        """(job id, cursor, when watched) of the jobs followed, oldest first."""

    @abstractmethod
    def advance(self, job_id: str, cursor: int, done: bool) -> None:
        """Move the job's cursor forward; stop following it when ``done``."""

    @abstractmethod
    def enqueue(self, deliveries: list[Delivery]) -> int:
        """Add deliveries due now; an id already there is left alone. Returns how many were new."""

    @abstractmethod
    def claim_due(self, limit: int, lease_s: float) -> list[Delivery]:
        """Due deliveries, each pushed ``lease_s`` ahead so that no other sender takes it
        meanwhile."""

    @abstractmethod
    def settle(self, delivery: Delivery, state: str, due_at: float | None = None) -> None:
        """Record an attempt: ``state`` delivered or failed (final), or pending again at
        ``due_at``."""

    @abstractmethod
    def get(self, delivery_id: str) -> Delivery | None: ...

    @abstractmethod
    def secret(self, owner: str) -> str:
        """The owner's signing secret (made on first use; the same for every process)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_watch (job_id TEXT PRIMARY KEY, cursor INTEGER NOT NULL,
                                          since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_outbox (id TEXT PRIMARY KEY, job_id TEXT NOT NULL,
    state TEXT NOT NULL, due_at REAL NOT NULL, expires_at REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (state, due_at);
CREATE TABLE IF NOT EXISTS webhook_secrets (owner TEXT PRIMARY KEY, secret TEXT NOT NULL);
"""


class SQLiteOutbox(Outbox):
    def __init__(self, path: Path, retention_s: int) -> None:
        self.path = path
        self.retention_s = retention_s
        self._db = ThreadLocalDB(path, _SCHEMA)

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def watch(self, job_id: str) -> None:
        self._exec("INSERT OR IGNORE INTO webhook_watch VALUES (?, 0, ?)", (job_id, time.time()))

    def watched(self, limit: int = 500) -> list[tuple[str, int, float]]:
        rows = self._exec("SELECT job_id, cursor, since FROM webhook_watch ORDER BY since "
                          "LIMIT ?", (limit,))
        return [(r[0], int(r[1]), float(r[2])) for r in rows]

    def advance(self, job_id: str, cursor: int, done: bool) -> None:
        if done:
            self._exec("DELETE FROM webhook_watch WHERE job_id = ?", (job_id,))
        else:
            self._exec("UPDATE webhook_watch SET cursor = max(cursor, ?) WHERE job_id = ?",
                       (cursor, job_id))

    def enqueue(self, deliveries: list[Delivery]) -> int:
        now, new = time.time(), 0
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            for d in deliveries:
                d.first_at = d.first_at or now
                cur = db.execute("INSERT OR IGNORE INTO webhook_outbox VALUES (?, ?, ?, ?, ?, ?)",
                                 (d.id, d.job_id, d.state, now, now + self.retention_s,
                                  json.dumps(asdict(d))))
                new += cur.rowcount
            db.execute("DELETE FROM webhook_outbox WHERE expires_at < ?", (now,))
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreUnavailable(f"sqlite: {e}") from e
        return new

    def claim_due(self, limit: int, lease_s: float) -> list[Delivery]:
        now = time.time()
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("SELECT id, data FROM webhook_outbox WHERE state = 'pending' "
                              "AND due_at <= ? ORDER BY due_at LIMIT ?", (now, limit)).fetchall()
            db.executemany("UPDATE webhook_outbox SET due_at = ? WHERE id = ?",
                           [(now + lease_s, r[0]) for r in rows])
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreUnavailable(f"sqlite: {e}") from e
        return [Delivery(**json.loads(r[1])) for r in rows]

    def settle(self, delivery: Delivery, state: str, due_at: float | None = None) -> None:
        delivery.state = state
        self._exec("UPDATE webhook_outbox SET state = ?, due_at = ?, data = ? WHERE id = ?",
                   (state, due_at or 0.0, json.dumps(asdict(delivery)), delivery.id))

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._exec("SELECT data FROM webhook_outbox WHERE id = ?", (delivery_id,))
        return Delivery(**json.loads(rows[0][0])) if rows else None

    def secret(self, owner: str) -> str:
        self._exec("INSERT OR IGNORE INTO webhook_secrets VALUES (?, ?)", (owner, new_secret()))
        return str(self._exec("SELECT secret FROM webhook_secrets WHERE owner = ?",
                              (owner,))[0][0])


_P = "convoy:webhook:"
# KEYS: due zset. ARGV: now, limit, lease end. → the ids claimed
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""
# KEYS: delivery hash, due zset. ARGV: id, data, due at, ttl. → 1 if new
_ENQUEUE = """
if redis.call('HSETNX', KEYS[1], 'data', ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""


class RedisOutbox(Outbox):
    def __init__(self, client: Any, retention_s: int) -> None:
        self.r = client
        self.retention_s = retention_s
        self._claim = client.register_script(_CLAIM)
        self._enqueue = client.register_script(_ENQUEUE)

    def watch(self, job_id: str) -> None:
        redis_call(self.r.zadd, f"{_P}watch", {job_id: time.time()}, nx=True)

    def watched(self, limit: int = 500) -> list[tuple[str, int, float]]:
        pairs = redis_call(self.r.zrange, f"{_P}watch", 0, limit - 1, withscores=True)
        if not pairs:
            return []
        ids = [p[0].decode() for p in pairs]
        cursors = redis_call(self.r.hmget, f"{_P}cursor", ids)
        return [(i, int(c or 0), float(p[1])) for i, c, p in zip(ids, cursors, pairs, strict=True)]

    def advance(self, job_id: str, cursor: int, done: bool) -> None:
        if done:
            pipe = self.r.pipeline()
            pipe.zrem(f"{_P}watch", job_id).hdel(f"{_P}cursor", job_id)
            redis_call(pipe.execute)
        else:
            redis_call(self.r.hset, f"{_P}cursor", job_id, cursor)

    def enqueue(self, deliveries: list[Delivery]) -> int:
        now, new = time.time(), 0
        for d in deliveries:
            d.first_at = d.first_at or now
            new += int(redis_call(self._enqueue, keys=[f"{_P}d:{d.id}", f"{_P}due"],
                                  args=[d.id, json.dumps(asdict(d)), now, self.retention_s]))
        return new

    def claim_due(self, limit: int, lease_s: float) -> list[Delivery]:
        now = time.time()
        ids = redis_call(self._claim, keys=[f"{_P}due"], args=[now, limit, now + lease_s])
        out = []
        for raw in ids:
            found = self.get(raw.decode())
            if found is None:  # expired: drop it from the schedule
                redis_call(self.r.zrem, f"{_P}due", raw)
            elif found.state == "pending":
                out.append(found)
        return out

    def settle(self, delivery: Delivery, state: str, due_at: float | None = None) -> None:
        delivery.state = state
        pipe = self.r.pipeline()
        pipe.hset(f"{_P}d:{delivery.id}", "data", json.dumps(asdict(delivery)))
        if state == "pending":
            pipe.zadd(f"{_P}due", {delivery.id: due_at or time.time()})
        else:
            pipe.zrem(f"{_P}due", delivery.id)
        redis_call(pipe.execute)

    def get(self, delivery_id: str) -> Delivery | None:
        raw = redis_call(self.r.hget, f"{_P}d:{delivery_id}", "data")
        return Delivery(**json.loads(raw)) if raw else None

    def secret(self, owner: str) -> str:
        key = f"{_P}secret:{owner}"
        redis_call(self.r.set, key, new_secret(), nx=True)
        return str(redis_call(self.r.get, key).decode())


def open_outbox(store: JobStore) -> Outbox:
    """The outbox beside a store, in the same backend."""
    from core.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteOutbox(store.path, store.retention_s)
    return RedisOutbox(store.r, store.retention_s)  # type: ignore[attr-defined]
