"""One SQLite connection per thread to a database file, in autocommit mode.

The side records kept beside the jobs (queue order, metering, the webhook outbox, cluster
counters, fine-tuned models) live in the embedded store's database file; each of their
SQLite implementations reads and writes through one of these. A connection is never shared
between threads, and each thread opens its own on first use.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any


class ThreadLocalDB:
    """Call it for this thread's connection; the schema (DDL) runs once, at construction."""

    def __init__(self, path: Any, schema: str = "") -> None:
        self.path = path
        self._local = threading.local()
        if schema:
            self().executescript(schema)

    def __call__(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            self._local.db = db
        return db
