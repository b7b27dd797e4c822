"""What a Redis exception means for the service, shared by the store and the modules that
keep their own keys beside it (outbox, queue order, metering, cluster counters): a full
Redis is ``StoreFull`` (503 with a longer Retry-After), a lost one ``StoreUnavailable``."""

from __future__ import annotations

import redis

from core.store.base import StoreFull, StoreUnavailable

# the exceptions a caller catches before asking store_errors what they mean
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
    redis.exceptions.OutOfMemoryError)


def store_errors(exc: Exception) -> StoreUnavailable | None:
    """The store error ``exc`` stands for; None when it is not a store failure."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return StoreFull(f"redis is full: {exc}")
    if isinstance(exc, REDIS_ERRORS):
        return StoreUnavailable(f"redis: {exc}")
    return None
