"""One reader per API process for every event stream and wait, fanned out on the event loop.

A stream that read its job's log on a thread of its own (a blocking ``XREAD`` in Redis mode,
a poll of SQLite every 10 ms in embedded mode) held that thread, and in Redis mode a pooled
connection, for as long as it was open: a few hundred streams from one key took the
connections and threads that everyone's submissions need. Here a single thread asks the
store once for the new events of all the jobs followed (``JobStore.events_many``: one
multi-key ``XREAD`` on a connection of its own, one SQLite query) and hands each job's
events to its followers' queues on the event loop. A stream costs a queue while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from core.store import Event, JobStore

log = logging.getLogger(__name__)


class Follower:
    """One stream's (or wait's) view of a job's events: a queue of event lists, each event
    handed on once and in order."""

    def __init__(self, job_id: str, after: int) -> None:
        self.job_id = job_id
        self.after = after  # the last sequence number handed on
        self.caught_up = False  # until its own first read, shared reads are not for it
        self.active = True
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

    def deliver(self, events: list[Event], catch_up: bool = False) -> None:
        """(On the event loop.) A read that came before this follower's own first read saw
        nothing that the first read does not: it is dropped. The first read is handed on
        even when empty, so that the follower knows it has seen all there was."""
        if catch_up:
            self.caught_up = True
        if not self.caught_up:
            return
        fresh = [e for e in events if e.seq > self.after]
        if fresh:
            self.after = fresh[-1].seq
        if fresh or catch_up:
            self.queue.put_nowait(fresh)

    async def next(self, timeout_s: float) -> list[Event] | None:
        """The next events ([] for an empty first read), or None after ``timeout_s``."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None


class EventHub:
    block_s = 0.1  # how long one read waits for news; a new follower waits at most this

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._followers: dict[str, set[Follower]] = {}
        self._cursors: dict[str, int] = {}  # job id -> the last sequence number read
        self._new: list[Follower] = []  # followers waiting for their first read
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the reader (from the event loop that the followers wait on)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read, name="convoy-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def follow(self, job_id: str, after: int) -> Follower:
        """Follow ``job_id``'s events after sequence number ``after`` (on the event loop)."""
        follower = Follower(job_id, after)
        with self._lock:
            self._followers.setdefault(job_id, set()).add(follower)
            self._new.append(follower)
        self._wake.set()
        return follower

    def unfollow(self, follower: Follower) -> None:
        with self._lock:
            follower.active = False
            followers = self._followers.get(follower.job_id)
            if followers is None:
                return
            followers.discard(follower)
            if not followers:
                del self._followers[follower.job_id]
                self._cursors.pop(follower.job_id, None)

    def following(self) -> int:
        with self._lock:
            return sum(len(f) for f in self._followers.values())

    # -- the reader thread -----------------------------------------------------------------
    def _read(self) -> None:
        down = False
        while not self._stop.is_set():
            try:
                self._catch_up()
                with self._lock:
                    cursors = dict(self._cursors)
                if not cursors:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                found = self.store.events_many(cursors, self.block_s)
            except Exception as e:  # noqa: BLE001 -- the store is down: followers recheck on their own
                if not down:
                    log.warning("event streams cannot read the store (%s); retrying", e)
                    down = True
                self._stop.wait(1.0)
                continue
            if down:
                log.warning("event streams read the store again")
                down = False
            if found:
                with self._lock:
                    for job_id, events in found.items():
                        if job_id in self._cursors:
                            self._cursors[job_id] = max(self._cursors[job_id], events[-1].seq)
                self._call(self._hand_on, found)

    def _catch_up(self) -> None:
        """Each new follower's first read, on its own (its ``after`` may be behind the
        shared cursor); the job joins the shared read from where this one ended."""
        with self._lock:
            new, self._new = self._new, []
        for i, follower in enumerate(new):
            if not follower.active:
                continue
            try:
                events = self.store.events(follower.job_id, follower.after)
            except Exception:
                with self._lock:
                    self._new[:0] = new[i:]
                raise
            with self._lock:
                if follower.active and follower.job_id not in self._cursors:
                    self._cursors[follower.job_id] = events[-1].seq if events else follower.after
            self._call(follower.deliver, events, True)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _hand_on(self, found: dict[str, list[Event]]) -> None:
        for job_id, events in found.items():
            for follower in list(self._followers.get(job_id, ())):
                follower.deliver(events)
