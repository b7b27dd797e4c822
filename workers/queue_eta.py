"""A queued job's place: how many jobs are ahead of it on its queue, and when it should
start and finish.

The estimate uses what the live workers report in their heartbeats: the queues each takes
and, per model, the moving average of a batch's time (``run_s``) and of one job's share of
it (``job_s``), scaled by the worker's time around the forward pass. The work ahead of a job
is the sum of the ``job_s`` of the jobs ahead (by their models) plus what is left of the
batches running now (from their progress where they report steps); the queue's workers
share it.
The job then finishes one ``run_s`` of its model after its start.

``QueueReporter`` (one per deployment at a time, by a lease) appends a ``queue`` event to a
queued job's stream when its position changes, at most every ``queue_events_s`` (less often
deep in the queue).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workers.cluster_stats import open_cluster_stats
from workers.queue_order import QueueOrder
from workers.store.base import Job, JobStore, StoreUnavailable

log = logging.getLogger(__name__)
TIDY_EVERY = 60  # reporter rounds between sweeps of the order index


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass
class QueueState:
    """One queue at one moment: its order and the figures estimates come from."""

    at: float
    order: list[str]  # queued job ids, best first
    models: dict[str, str]  # job id → model, for the jobs in ``order``
    job_s: dict[str, float]  # model → seconds of a job's share of a batch
    run_s: dict[str, float]  # model → seconds of a batch
    workers: int  # live workers taking this queue
    busy_s: float  # seconds of running batches still to go, over all the queue's workers
    created: dict[str, float] = field(default_factory=dict)  # job id → submitted (epoch)
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {j: i for i, j in enumerate(self.order, start=1)}

    def _job_s(self, model: str) -> float | None:
        if model in self.job_s:
            return self.job_s[model]
        known = list(self.job_s.values())
        return sum(known) / len(known) if known else None

    def info(self, job_id: str, model: str) -> dict[str, Any] | None:
        """The ``queue`` field of a queued job's record (None if it is not in the order)."""
        pos = self.position.get(job_id)
        if pos is None:
            return None
        out: dict[str, Any] = {"position": pos, "ahead": pos - 1, "workers": self.workers,
                               "eta_start_at": None, "eta_finish_at": None}
        costs = [self._job_s(self.models.get(j, model)) for j in self.order[:pos - 1]]
        if self.workers and all(c is not None for c in costs) and self._job_s(model) is not None:
            start = self.at + (self.busy_s + sum(c for c in costs if c is not None)) / self.workers
            run = self.run_s.get(model) or self._job_s(model) or 0.0
            out["eta_start_at"], out["eta_finish_at"] = iso(start), iso(start + run)
            out["eta_start_s"] = round(start - self.at, 3)
        return out


class QueueEstimator:
    """Queue states, read from the store at most every ``ttl_s`` per queue."""

    def __init__(self, store: JobStore, order: QueueOrder, ttl_s: float = 1.0) -> None:
        self.store, self.order, self.ttl_s = store, order, ttl_s
        self._cache: dict[str, QueueState] = {}
        self._models: dict[str, dict[str, str]] = {}  # queue → queued job id → its model
        self._lock = threading.Lock()

    def state(self, queue: str, fresh: bool = False) -> QueueState:
        with self._lock:
            cached = self._cache.get(queue)
        if not fresh and cached is not None and time.time() - cached.at < self.ttl_s:
            return cached
        fresh = self._read(queue)
        with self._lock:
            self._cache[queue] = fresh
        return fresh

    def _read(self, queue: str) -> QueueState:
        now = time.time()
        entries = self.order.entries(queue)
        workers = [w for w in self.store.workers() if queue in (w.get("queues") or [queue])]
        job_s: dict[str, list[float]] = {}
        run_s: dict[str, list[float]] = {}
        for w in workers:
            for model, m in (w.get("stats") or {}).get("models", {}).items():
                # a job's share of the forward pass, scaled up by the worker's own time around
                # it (claim, outputs, record), which is part of every job's turn
                scale = max(1.0, float(m.get("wall_s", m["run_s"])) / max(1e-6, m["run_s"]))
                job_s.setdefault(model, []).append(float(m["job_s"]) * scale)
                run_s.setdefault(model, []).append(float(m["run_s"]) * scale)
        mean_job = {k: sum(v) / len(v) for k, v in job_s.items()}
        mean_run = {k: sum(v) / len(v) for k, v in run_s.items()}
        ids = {w["id"] for w in workers}
        busy: dict[str, float] = {}  # worker → seconds left of its running batch
        for job_id, worker in self.store.running_jobs():
            if worker not in ids:
                continue
            job = self.store.get(job_id)
            if job is None or job.queue != queue:
                continue
            started = job.started_at
            elapsed = now - datetime.fromisoformat(started).timestamp() if started else 0.0
            progress = job.progress or {}
            step, total = int(progress.get("step") or 0), int(progress.get("total") or 0)
            if 0 < step <= total:  # an iterative job tells how far it is
                left = elapsed * (total - step) / step
            else:
                left = max(0.0, mean_run.get(job.model, 0.0) - elapsed)
            busy[worker] = max(busy.get(worker, 0.0), left)
        known = self._models.get(queue, {})  # a job's model never changes: read it once
        models = {}
        for e in entries:
            if e.job_id not in known:
                job = self.store.get(e.job_id)
                if job is None:
                    continue
                known[e.job_id] = job.model
            models[e.job_id] = known[e.job_id]
        self._models[queue] = models  # jobs that left the queue are forgotten
        return QueueState(now, [e.job_id for e in entries], models, mean_job, mean_run,
                          len(workers), sum(busy.values()),
                          created={e.job_id: e.created for e in entries})

    def annotate(self, records: list[dict[str, Any]], jobs: list[Job]) -> None:
        """Add the ``queue`` field to the public records of queued jobs (in place)."""
        refreshed: set[str] = set()
        for record, job in zip(records, jobs, strict=True):
            if job.status != "queued":
                continue
            queue = job.queue
            try:
                state = self.state(queue)
                if job.id not in state.position and queue not in refreshed:
                    refreshed.add(queue)  # newer than the cached order: read it again
                    state = self.state(queue, fresh=True)
                record["queue"] = state.info(job.id, job.model)
            except StoreUnavailable:
                record["queue"] = None


class QueueReporter:
    """Appends ``queue`` events for changed positions; one process at a time (a lease)."""

    def __init__(self, store: JobStore, order: QueueOrder, every_s: float, holder: str) -> None:
        self.store, self.order, self.every_s, self.holder = store, order, every_s, holder
        self.estimator = QueueEstimator(store, order, ttl_s=0.0)
        self._sent: dict[str, tuple[int, float]] = {}  # job id → (position, when)
        self._rounds = 0

    def run_once(self) -> int:
        """One round over every queue; returns how many events were appended."""
        if not self.order.lead("queue-reporter", self.holder, self.every_s * 3 + 5):
            return 0
        appended, now, seen = 0, time.time(), set()
        for queue in self.order.queues():
            state = self.estimator.state(queue)
            for job_id in state.order:
                seen.add(job_id)
                pos = state.position[job_id]
                last = self._sent.get(job_id)
                if last is not None and (last[0] == pos or
                                         now - last[1] < self.every_s * max(1.0, pos / 10)):
                    continue
                info = state.info(job_id, state.models.get(job_id, ""))
                try:
                    self.store.append_event(job_id, "queue", info or {"position": pos})
                except KeyError:
                    continue
                self._sent[job_id] = (pos, now)
                appended += 1
        self._sent = {j: v for j, v in self._sent.items() if j in seen}
        self._rounds += 1
        if self._rounds % TIDY_EVERY == 0:
            self.order.tidy()
            cluster = open_cluster_stats(self.store)
            if cluster is not None:
                cluster.fold({w["id"] for w in self.store.workers()})
        return appended

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except StoreUnavailable as e:
                log.warning("queue events skipped: %s", e)
            except Exception:
                log.exception("queue events failed")
            stop.wait(self.every_s)

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="convoy-queue-events",
                             daemon=True)
        t.start()
        return t
