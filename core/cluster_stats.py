"""Worker counters that add up across the deployment.

A worker's own counters (``workers/stats.py``) live in its process: they reset when it
exits, and a sum over the live workers' heartbeats goes backwards when one goes away. So
each worker also saves its cumulative snapshot in the store every few seconds, and the
snapshots of workers that are gone are folded into one *retired* total (one atomic step,
done by whichever process holds the reporter lease). The deployment's total is retired +
every saved snapshot: it only grows.

The API exports these totals from one process at a time (the holder of the ``metrics``
lease, see ``service/lifecycle_metrics.py``), so that summing the series of several API
replicas does not multiply them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from typing import Any

from core.sqlite_local import ThreadLocalDB
from core.store.base import JobStore, StoreUnavailable
from core.store.redis_errors import as_store_errors, redis_call


def merge(a: Any, b: Any) -> Any:
    """The sum of two snapshots (numbers add, dicts merge key by key; others: b's)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: merge(a.get(k), b.get(k)) if k in a and k in b else a.get(k, b.get(k))
                for k in {*a, *b}}
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return a + b
    return b if b is not None else a


def counters(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The parts of a worker's stats snapshot that are counters (moving averages are not)."""
    return {k: v for k, v in snapshot.items() if k in ("jobs", "histograms", "by_model")}


class ClusterStats(ABC):
    @abstractmethod
    def save(self, worker: str, snapshot: dict[str, Any]) -> None: ...

    @abstractmethod
    def fold(self, live: set[str]) -> int:
        """Fold the snapshots of workers not in ``live`` (and silent for a minute) into the
        retired total; returns how many."""

    @abstractmethod
    def totals(self) -> dict[str, Any]: ...


class SQLiteClusterStats(ClusterStats):
    def __init__(self, path: Any) -> None:
        self.path = path
        self._db = ThreadLocalDB(path, "CREATE TABLE IF NOT EXISTS worker_totals (worker TEXT "
                                       "PRIMARY KEY, data TEXT NOT NULL, saved REAL NOT NULL)")

    def save(self, worker: str, snapshot: dict[str, Any]) -> None:
        try:
            self._db().execute("INSERT OR REPLACE INTO worker_totals VALUES (?, ?, ?)",
                               (worker, json.dumps(counters(snapshot)), time.time()))
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"sqlite: {e}") from e

    def fold(self, live: set[str]) -> int:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT worker, data FROM worker_totals WHERE worker != '' AND "
                              "saved < ?", (time.time() - 60,)).fetchall()
            gone = [(w, json.loads(d)) for w, d in rows if w not in live]
            if gone:
                row = db.execute("SELECT data FROM worker_totals WHERE worker = ''").fetchone()
                retired = json.loads(row[0]) if row else {}
                for _, data in gone:
                    retired = merge(retired, data)
                db.execute("INSERT OR REPLACE INTO worker_totals VALUES ('', ?, ?)",
                           (json.dumps(retired), time.time()))
                db.executemany("DELETE FROM worker_totals WHERE worker = ?",
                               [(w,) for w, _ in gone])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(gone)

    def totals(self) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for (data,) in self._db().execute("SELECT data FROM worker_totals"):
            total = merge(total, json.loads(data))
        return total


_P = "convoy:totals:"


class RedisClusterStats(ClusterStats):
    def __init__(self, client: Any) -> None:
        import redis

        self.r = client
        self._watch_error = redis.WatchError

    def save(self, worker: str, snapshot: dict[str, Any]) -> None:
        redis_call(self.r.hset, f"{_P}workers", worker, json.dumps(
            {"saved": time.time(), "data": counters(snapshot)}))

    def fold(self, live: set[str]) -> int:
        for _ in range(5):  # optimistic: another folder's change starts the step again
            with as_store_errors(), self.r.pipeline() as pipe:
                try:
                    pipe.watch(f"{_P}workers", f"{_P}retired")
                    saved = {k.decode(): json.loads(v) for k, v in
                             pipe.hgetall(f"{_P}workers").items()}
                    gone = [w for w, v in saved.items()
                            if w not in live and v["saved"] < time.time() - 60]
                    if not gone:
                        return 0
                    raw = pipe.get(f"{_P}retired")
                    retired = json.loads(raw) if raw else {}
                    for w in gone:
                        retired = merge(retired, saved[w]["data"])
                    pipe.multi()
                    pipe.set(f"{_P}retired", json.dumps(retired))
                    pipe.hdel(f"{_P}workers", *gone)
                    pipe.execute()
                    return len(gone)
                except self._watch_error:
                    continue
        return 0

    def totals(self) -> dict[str, Any]:
        with as_store_errors():
            raw = self.r.get(f"{_P}retired")
            saved = self.r.hvals(f"{_P}workers")
        total: dict[str, Any] = json.loads(raw) if raw else {}
        for v in saved:
            total = merge(total, json.loads(v)["data"])
        return total


def open_cluster_stats(store: JobStore) -> ClusterStats | None:
    from core.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return SQLiteClusterStats(store.path)
    from core.store.redis import RedisStore

    if isinstance(store, RedisStore):
        return RedisClusterStats(store.r)
    return None
