"""What a Redis exception means for the service, shared by the store and the modules that
keep their own keys beside it (outbox, queue order, metering, cluster counters): a full
Redis is ``StoreFull`` (503 with a longer Retry-After), a lost one ``StoreUnavailable``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

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


T = TypeVar("T")


@contextmanager
def as_store_errors() -> Iterator[None]:
    """Within the block, a Redis failure is raised as the store error it stands for."""
    try:
        yield
    except REDIS_ERRORS as e:
        raise (store_errors(e) or StoreUnavailable(f"redis: {e}")) from e


def redis_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, a Redis failure raised as the store error it stands for."""
    with as_store_errors():
        return fn(*args, **kwargs)
