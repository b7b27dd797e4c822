"""The job store: records, per-job event logs, artifacts, cancel flags and worker heartbeats.

One interface (``JobStore``), two implementations: SQLite (embedded mode) and Redis
(distributed mode). ``open_store(settings)`` picks by ``CONVOY_REDIS_URL``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.store.base import (
    TERMINAL,
    Event,
    Job,
    JobStore,
    Outcome,
    StoreFull,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from workers.settings import Settings


def open_store(settings: Settings) -> JobStore:
    if settings.redis_url:
        from workers.store.redis import RedisStore

        return RedisStore(settings.redis_url, retention_s=settings.retention_s,
                          max_owner_bytes=settings.max_stored_bytes_per_owner)
    from workers.settings import private_dir, private_file
    from workers.store.sqlite import SQLiteStore

    # SQLite gives its -wal and -shm files the mode of the database file.
    db = private_file(private_dir(settings.data_dir) / "convoy.db")
    return SQLiteStore(db, retention_s=settings.retention_s,
                       max_owner_bytes=settings.max_stored_bytes_per_owner)


__all__ = ["TERMINAL", "Event", "Job", "JobStore", "Outcome", "StoreFull", "StoreUnavailable",
           "open_store"]
