"""Who runs next on a queue: higher priority first, first come first served within one, and
a job waiting longer than ``CONVOY_STARVATION_S`` ahead of every priority.

The broker delivers messages in the order they were sent (Celery's priorities on Redis are
unreliable), so a message is treated as a *token*: when a worker takes one, it runs the
best job queued on that queue, which is its own job only if nothing ranks ahead of it. The
job it ran instead is marked, and that job's own message, when it comes, is a free token in
turn. Every queued job has one message, so tokens and jobs balance; where the order index
misses a job (a job queued again after its worker died, a submission older than the
index), its message simply runs it, as before. The index is a hint kept beside the store:
entries of jobs that left the queue are dropped when seen.

The same order gives each queued job its position (``positions``).
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.job import Job
from core.sqlite_local import ThreadLocalDB
from core.store.base import JobStore, StoreUnavailable
from core.store.redis_errors import redis_call

MAX_PRIORITY = 9  # priorities are 0 (default) .. MAX_PRIORITY


@dataclass(frozen=True)
class Entry:
    job_id: str
    priority: int
    created: float  # epoch seconds


def created_at(job: Job) -> float:
    """A job's submission time in epoch seconds (now if its record has none)."""
    try:
        return datetime.fromisoformat(job.created_at).timestamp()
    except ValueError:
        return time.time()


def rank(entry: Entry, now: float, starvation_s: float) -> tuple[int, int, float]:
    """Sort key: promoted (waited past the bound) first by age, then priority, then age."""
    if now - entry.created > starvation_s:
        return (0, 0, entry.created)
    return (1, -entry.priority, entry.created)


class QueueOrder(ABC):
    def __init__(self, starvation_s: float) -> None:
        self.starvation_s = starvation_s

    @abstractmethod
    def add(self, entries: list[tuple[str, Entry]]) -> None:
        """Index jobs, each (its queue, its entry), in one store step; a job taken already
        is not indexed again."""

    @abstractmethod
    def entries(self, queue: str) -> list[Entry]:
        """The queue's indexed jobs that are still queued, best first."""

    @abstractmethod
    def queues(self) -> list[str]:
        """The queues that have indexed jobs."""

    @abstractmethod
    def tidy(self) -> int:
        """Drop the entries and marks of jobs that are neither queued nor running."""

    @abstractmethod
    def lead(self, name: str, holder: str, ttl_s: float) -> bool:
        """Whether ``holder`` holds (or now takes) the lease ``name`` for ``ttl_s`` more."""

    @abstractmethod
    def pick(self, job_ids: list[str], store: JobStore | None = None) -> list[str]:
        """The jobs to run for a message that named ``job_ids``, in order: for each, the
        best queued job of its queue, taken out of the index. A job missing from the index
        (submitted past the API, or its entry dropped before it was created) is run by its
        own message; one taken already (a message sent again, a job queued again after its
        worker died) too. A message whose job another message ran is a token: it runs the
        best job left."""

    def positions(self, queue: str) -> dict[str, int]:
        """Job id → 1-based position among the queue's queued jobs."""
        return {e.job_id: i for i, e in enumerate(self.entries(queue), start=1)}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_order (job_id TEXT PRIMARY KEY, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, created REAL NOT NULL, taken INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS queue_order_rank ON queue_order (queue, priority, created);
CREATE TABLE IF NOT EXISTS queue_tokens (job_id TEXT PRIMARY KEY, queue TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
                                   until REAL NOT NULL);
"""
_BEST = """
SELECT o.job_id FROM queue_order o JOIN jobs j ON j.id = o.job_id
WHERE o.queue = ? AND o.taken = 0 AND j.status = 'queued'
ORDER BY o.created < ? DESC, CASE WHEN o.created < ? THEN 0 ELSE o.priority END DESC, o.created
LIMIT 1
"""


class SQLiteOrder(QueueOrder):
    def __init__(self, path: Any, starvation_s: float) -> None:
        super().__init__(starvation_s)
        self.path = path
        self._db = ThreadLocalDB(path, _SCHEMA)

    def add(self, entries: list[tuple[str, Entry]]) -> None:
        try:
            self._db().executemany(
                "INSERT OR IGNORE INTO queue_order VALUES (?, ?, ?, ?, 0)",
                [(e.job_id, queue, e.priority, e.created) for queue, e in entries])
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def entries(self, queue: str) -> list[Entry]:
        rows = self._db().execute(
            "SELECT o.job_id, o.priority, o.created FROM queue_order o JOIN jobs j "
            "ON j.id = o.job_id WHERE o.queue = ? AND o.taken = 0 AND j.status = 'queued'",
            (queue,)).fetchall()
        now = time.time()
        return sorted((Entry(r[0], int(r[1]), float(r[2])) for r in rows),
                      key=lambda e: rank(e, now, self.starvation_s))

    def queues(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT DISTINCT queue FROM queue_order")]

    def tidy(self) -> int:
        gone = "SELECT id FROM jobs WHERE status IN ('queued', 'running')"
        db = self._db()
        n = db.execute(f"DELETE FROM queue_order WHERE job_id NOT IN ({gone})").rowcount
        db.execute(f"DELETE FROM queue_tokens WHERE job_id NOT IN ({gone})")
        return int(n)

    def lead(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.time()
        try:
            cur = self._db().execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "holder = excluded.holder, until = excluded.until "
                "WHERE leases.holder = excluded.holder OR leases.until < ?",
                (name, holder, now + ttl_s, now))
        except sqlite3.OperationalError:
            return False
        return cur.rowcount == 1

    def pick(self, job_ids: list[str], store: JobStore | None = None) -> list[str]:
        out = []
        for job_id in job_ids:
            try:
                queue, kind = self._token(job_id)
                if kind == "taken":
                    out.append(job_id)
                    continue
                if queue is None:  # not indexed (the API indexes a job before its message
                    out.append(job_id)  # exists): its message runs it, as without an index
                    continue
                best = self._reserve(queue, None if kind == "free" else job_id)
            except StoreUnavailable:
                best = None
            out.append(best or job_id)
        return out

    def _token(self, job_id: str) -> tuple[str | None, str]:
        """What a message naming ``job_id`` is: (its queue, 'free') if another message ran
        the job (the mark is used up); (its queue, 'own') if the job waits in the index;
        (None, 'taken') if the job was taken already (a message sent twice); (None,
        'unknown') if the job is not indexed."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute("DELETE FROM queue_tokens WHERE job_id = ? RETURNING queue",
                              (job_id,)).fetchall()
            row = None if rows else db.execute(
                "SELECT queue, taken FROM queue_order WHERE job_id = ?", (job_id,)).fetchone()
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreUnavailable(f"sqlite: {e}") from e
        if rows:
            return str(rows[0][0]), "free"
        if row is None:
            return None, "unknown"
        return (None, "taken") if row[1] else (str(row[0]), "own")

    def _reserve(self, queue: str, own: str | None) -> str | None:
        """Take the best queued job of ``queue`` out of the index; mark it as run by another
        message unless it is ``own``."""
        db = self._db()
        bound = time.time() - self.starvation_s
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(_BEST, (queue, bound, bound)).fetchone()
            if row is not None:
                db.execute("UPDATE queue_order SET taken = 1 WHERE job_id = ?", (row[0],))
                if row[0] != own:
                    db.execute("INSERT OR REPLACE INTO queue_tokens VALUES (?, ?)",
                               (row[0], queue))
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreUnavailable(f"sqlite: {e}") from e
        return str(row[0]) if row else None


_P = "convoy:order:"
# A message's picks in one step. ARGV: now, starvation, key prefix, ttl, the highest
# priority, then the message's job ids. For each id, as ``SQLiteOrder.pick`` does it: a token
# mark left by another message ('free': take the best job of the queue), or the job still in
# the index ('own': take the best, which may be itself), or else the job runs itself. Taking a
# job other than the message's own leaves that job's message a token. → the job to run for
# each id, in order
_PICK = """
local now, starve, P, ttl, top = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4],
                                 tonumber(ARGV[5])
local function reserve(queue, own)
  local best, bestkey, old, oldkey, oldscore
  for p = top, 0, -1 do
    local key = P .. queue .. ':' .. p
    while true do
      local h = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #h == 0 then break end
      if redis.call('SISMEMBER', 'convoy:queued', h[1]) == 1 then
        if not best then best, bestkey = h[1], key end
        if not old or tonumber(h[2]) < oldscore then old, oldkey, oldscore = h[1], key, tonumber(h[2]) end
        break
      end
      redis.call('ZREM', key, h[1]); redis.call('HDEL', P .. 'where', h[1])
    end
  end
  if old and now - oldscore > starve then best, bestkey = old, oldkey end
  if not best then return false end
  redis.call('ZREM', bestkey, best)
  redis.call('HDEL', P .. 'where', best)
  redis.call('SET', P .. 'taken:' .. best, 1, 'EX', ttl)
  if best ~= own then redis.call('SET', P .. 'token:' .. best, queue, 'EX', ttl) end
  return best
end
local out = {}
for i = 6, #ARGV do
  local id, picked = ARGV[i], false
  local queue = redis.call('GETDEL', P .. 'token:' .. id)
  if queue then
    picked = reserve(queue, '')
  else
    queue = redis.call('HGET', P .. 'where', id)
    if queue then picked = reserve(queue, id) end
  end
  out[#out + 1] = picked or id
end
return out
"""


# A group of jobs indexed in one step. ARGV: the key prefix, then (id, created, queue,
# priority) for each job. A job taken already is not indexed again. → the number indexed
_ADD = """
local P, n = ARGV[1], 0
for i = 2, #ARGV, 4 do
  local id, created, queue, level = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('EXISTS', P .. 'taken:' .. id) == 0 then
    redis.call('ZADD', P .. queue .. ':' .. level, 'NX', created, id)
    redis.call('HSET', P .. 'where', id, queue)
    redis.call('SADD', P .. 'queues', queue)
    n = n + 1
  end
end
return n
"""


class RedisOrder(QueueOrder):
    def __init__(self, client: Any, starvation_s: float, retention_s: int) -> None:
        super().__init__(starvation_s)
        self.r = client
        self.retention_s = retention_s
        self._pick_script = client.register_script(_PICK)
        self._add_script = client.register_script(_ADD)

    @staticmethod
    def _levels(queue: str) -> list[str]:
        return [f"{_P}{queue}:{p}" for p in range(MAX_PRIORITY + 1)]

    def add(self, entries: list[tuple[str, Entry]]) -> None:
        """One script call for the group (one round trip, where a pipeline of scripts
        would first ask whether the server has them)."""
        if not entries:
            return
        args: list[Any] = [_P]
        for queue, e in entries:
            args += [e.job_id, e.created, queue, e.priority]
        redis_call(self._add_script, args=args)

    def queues(self) -> list[str]:
        return sorted(q.decode() for q in redis_call(self.r.smembers, f"{_P}queues"))

    def tidy(self) -> int:
        dropped = 0
        for queue in self.queues():
            for key in self._levels(queue):
                ids = [m.decode() for m in redis_call(self.r.zrange, key, 0, -1)]
                if not ids:
                    continue
                queued = redis_call(self.r.smismember, "convoy:queued", ids)
                for job_id, q in zip(ids, queued, strict=True):
                    status = None if q else redis_call(self.r.hget, f"convoy:job:{job_id}",
                                                       "status")
                    if not q and status != b"running":
                        redis_call(self.r.zrem, key, job_id)
                        redis_call(self.r.hdel, f"{_P}where", job_id)
                        dropped += 1
        return dropped

    def lead(self, name: str, holder: str, ttl_s: float) -> bool:
        key, ms = f"{_P}lease:{name}", int(ttl_s * 1000)
        if redis_call(self.r.set, key, holder, nx=True, px=ms):
            return True
        if redis_call(self.r.get, key) == holder.encode():
            redis_call(self.r.pexpire, key, ms)
            return True
        return False

    def entries(self, queue: str) -> list[Entry]:
        pipe = self.r.pipeline()
        for key in self._levels(queue):
            pipe.zrange(key, 0, -1, withscores=True)
        found = [Entry(m.decode(), p, float(s))
                 for p, level in enumerate(redis_call(pipe.execute)) for m, s in level]
        if not found:
            return []
        queued = redis_call(self.r.smismember, "convoy:queued", [e.job_id for e in found])
        now = time.time()
        return sorted((e for e, q in zip(found, queued, strict=True) if q),
                      key=lambda e: rank(e, now, self.starvation_s))

    def pick(self, job_ids: list[str], store: JobStore | None = None) -> list[str]:
        """One round trip for the whole message (a script), however many jobs it names."""
        try:
            picked = redis_call(self._pick_script, args=[
                time.time(), self.starvation_s, _P, self.retention_s, MAX_PRIORITY, *job_ids])
        except StoreUnavailable:
            return list(job_ids)
        return [p.decode() for p in picked]


def open_order(store: JobStore, starvation_s: float) -> QueueOrder | None:
    """The order index beside a store (None for a store of another kind: no reordering)."""
    from core.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteOrder(store.path, starvation_s)
    try:
        from core.store.redis import RedisStore
    except ImportError:
        return None
    if isinstance(store, RedisStore):
        return RedisOrder(store.r, starvation_s, store.retention_s)
    return None
