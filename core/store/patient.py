"""A view of a job store that waits out an outage instead of failing.

A worker that has run a job must record its outcome: if Redis restarts at that moment, the
record call waits for it (up to ``patience_s``) rather than dropping the result and leaving
the job ``running`` forever. The API does not use this: it answers 503 at once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from core.store.base import StoreUnavailable

if TYPE_CHECKING:
    from core.store.base import JobStore

log = logging.getLogger(__name__)


class _Patient:
    def __init__(self, store: JobStore, patience_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._store = store
        self._patience_s = patience_s
        self._sleep = sleep

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            deadline = time.monotonic() + self._patience_s
            delay = 0.05
            warned = False
            while True:
                try:
                    result = attr(*args, **kwargs)
                except StoreUnavailable as e:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise
                    if not warned:
                        log.warning("the store does not answer (%s); %s waits for it", e, name)
                        warned = True
                    self._sleep(min(delay, left))
                    delay = min(delay * 2, 2.0)
                    continue
                if warned:
                    log.warning("the store answers again; %s went through", name)
                return result

        return call


def patient(store: JobStore, patience_s: float,
            sleep: Callable[[float], None] = time.sleep) -> JobStore:
    """``store`` with every call retried while it raises StoreUnavailable, for ``patience_s``."""
    return cast("JobStore", _Patient(store, patience_s, sleep))
