"""Requests that wait for their job's end (``Prefer: wait``), without a thread each.

Where the store announces finishes (Redis: one subscription per API process), a listener
thread hands each finish to the requests waiting for that job on the event loop; they
also read the record again every ``recheck_s``, so a finish missed while the
subscription was down only delays them. Elsewhere each waiting request follows the job's
events through the process's shared reader (``service.streams.EventHub``) and reads the
record when its final status comes (or every few seconds).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import Any

import anyio

from service.streams import EventHub
from workers.store import TERMINAL, Job, JobStore


class Waiters:
    recheck_s = 1.0

    def __init__(self, store: JobStore, hub: EventHub) -> None:
        self.store = store
        self.hub = hub
        self.push = store.announces_finishes
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start listening (from the event loop that will await the waits)."""
        if not self.push or self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self.store.listen_finished, args=(self._finished, self._stop),
            name="convoy-finishes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def expect(self, job_id: str) -> asyncio.Future[dict[str, Any]] | None:
        """Register a wait before the job exists, so that no finish slips past it."""
        if not self.push or self._loop is None:
            return None
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._waiting.setdefault(job_id, []).append(future)
        return future

    def forget(self, job_id: str, future: asyncio.Future[dict[str, Any]] | None) -> None:
        futures = self._waiting.get(job_id)
        if future is None or futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._waiting[job_id]

    async def wait(self, job: Job, future: asyncio.Future[dict[str, Any]] | None,
                   timeout_s: float) -> Job | None:
        """The job's record once it is terminal, or its latest one when the time is up."""
        if future is None:
            return await self._follow(job, timeout_s)
        deadline = time.monotonic() + timeout_s
        latest: Job | None = job
        while (left := deadline - time.monotonic()) > 0:
            done, _ = await asyncio.wait((future,), timeout=min(left, self.recheck_s))
            if done:
                return replace(job, **future.result())
            latest = await anyio.to_thread.run_sync(self.store.get, job.id)
            if latest is None or latest.terminal:
                return latest
        return latest

    async def _follow(self, job: Job, timeout_s: float) -> Job | None:
        deadline = time.monotonic() + timeout_s
        follower = self.hub.follow(job.id, 1)  # 1: the queued event
        latest: Job | None = job
        try:
            while (left := deadline - time.monotonic()) > 0:
                events = await follower.next(min(left, 5.0))
                if events is not None and not any(e.type == "status" and e.data.get("status") in TERMINAL
                                      for e in events):
                    continue
                latest = await anyio.to_thread.run_sync(self.store.get, job.id)
                if latest is None or latest.terminal:
                    return latest
            return latest
        finally:
            self.hub.unfollow(follower)

    # -- the listener thread's side ----------------------------------------------------------
    def _finished(self, finished: list[tuple[str, dict[str, Any]]]) -> None:
        mine = [f for f in finished if f[0] in self._waiting]  # a racy peek, settled below
        if mine and self._loop is not None:
            self._loop.call_soon_threadsafe(self._resolve, mine)  # one wake-up per batch

    def _resolve(self, finished: list[tuple[str, dict[str, Any]]]) -> None:
        for job_id, changed in finished:
            for future in self._waiting.get(job_id, ()):
                if not future.done():
                    future.set_result(changed)


def wait_terminal(store: JobStore, job_id: str, timeout_s: float, after: int = 0
                  ) -> Job | None:
    """Block (a thread) until the job is terminal or the time is up; return the job.

    It follows the job's events (from ``after``, a sequence number the caller has seen)
    and reads the record again only when a final status event arrives or none came for
    a second."""
    deadline = time.monotonic() + timeout_s
    job = store.get(job_id)
    while job is not None and not job.terminal:
        left = deadline - time.monotonic()
        if left <= 0:
            return job
        new = store.events(job_id, after, block_s=min(left, 1.0))
        if new:
            after = new[-1].seq
        if not new or any(e.type == "status" and e.data.get("status") in TERMINAL
                          for e in new):
            job = store.get(job_id)
    return job
