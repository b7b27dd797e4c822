"""The worker runtime: runs one job (claim, model, batch, artifacts, outcome), keeps the
worker's heartbeat, and hands the jobs of dead workers back to the queue."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import TYPE_CHECKING, Any

from models.catalog import Catalog, ModelNotFound
from models.predictor import Artifact, InvalidRequest, Request
from workers.batcher import Batcher, Item, OutOfMemory, Stopped
from workers.celery_app import dispatch
from workers.contract import prepare
from workers.errors import ConvoyError
from workers.settings import Settings, new_id
from workers.stats import WorkerStats
from workers.store import JobStore, StoreUnavailable
from workers.store.patient import patient

if TYPE_CHECKING:
    from celery import Celery

    from workers.cache import ModelCache

log = logging.getLogger(__name__)


def finish_and_announce(
    store: JobStore, job_id: str, worker: str | None, status: str,
    output: dict[str, Any] | None = None, error: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Record a terminal status and append the events that end the job's stream."""
    return store.finish_and_announce(job_id, worker, status, output=output, error=error)


CANCEL_POLL_S = 0.005  # how often a running job's cancel flag is read: about every step
# What run_job returns → the job's final status (the rest are failures).
_STATUS_OF = {"succeeded": "succeeded", "canceled": "canceled"}


def _seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds between two ISO timestamps of the store (None if either is missing)."""
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def link_artifacts(store: JobStore, job_id: str, value: Any) -> Any:
    """Store every Artifact inside a predictor result and swap it for its link."""
    if isinstance(value, Artifact):
        store.put_artifact(job_id, value.name, value.data, value.content_type)
        return {"name": value.name, "url": f"/v1/jobs/{job_id}/artifacts/{value.name}",
                "content_type": value.content_type, **value.meta}
    if isinstance(value, dict):
        return {k: link_artifacts(store, job_id, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [link_artifacts(store, job_id, v) for v in value]
    return value


class WorkerRuntime:
    def __init__(self, settings: Settings, store: JobStore, catalog: Catalog, cache: ModelCache,
                 celery: Celery | None = None, name: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.cache = cache
        self.celery = celery
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self.stats = WorkerStats()
        self.batcher = Batcher(enabled=settings.batching, on_batch=self.stats.batch,
                               canceled=self._canceled_among, poll_s=CANCEL_POLL_S)
        self.jobs_done = 0
        self.started = time.time()
        self._stop = threading.Event()
        # Outcomes wait out a store outage; progress and previews are dropped during one.
        self.durable = patient(store, settings.store_patience_s)
        self._active: Counter[str] = Counter()  # jobs a thread of this process is running
        self._active_lock = threading.Lock()

    # -- one job -------------------------------------------------------------------------------
    def run_job(self, job_id: str) -> str:
        """Run a job to its end; return what happened (for logs and tests)."""
        marks: dict[str, float] = {}
        job: dict[str, Any] = {}
        outcome = self._run(job_id, job, marks)
        if job and outcome != "missing" and not outcome.startswith("skipped"):
            claimed = marks.get("claimed")
            self.stats.job(job["kind"], job["model"], _STATUS_OF.get(outcome, "failed"),
                           queue_wait_s=marks.get("queue_wait"),
                           run_s=None if claimed is None else time.monotonic() - claimed)
        return outcome

    def _run(self, job_id: str, job: dict[str, Any], marks: dict[str, float]) -> str:
        """Claim the job (one step: a message for a job that is not queued any more, a
        redelivery, is skipped), run it and record its outcome; ``job`` gets the record."""
        self.batcher.expect()
        submitted = False
        self._hold(job_id, +1)
        try:
            claimed, why = self.durable.try_claim(job_id, self.id)
            if claimed is None:
                return "missing" if why == "missing" else f"skipped ({why})"
            job.update(claimed)
            marks["claimed"] = time.monotonic()
            wait = _seconds_between(claimed.get("created_at"), claimed.get("started_at"))
            if wait is not None:
                marks["queue_wait"] = wait
            if claimed.get("cancel_requested"):  # the record carries the flag: no extra read
                finish_and_announce(self.durable, job_id, self.id, "canceled")
                return "canceled"
            if claimed["attempts"] > self.settings.max_attempts:
                self._fail(job_id, "worker_lost",
                           f"the job ended its worker {claimed['attempts'] - 1} times")
                return "worker_lost"
            item = self._item(claimed)
            future = self.batcher.submit(item)
            submitted = True
            deadline = self._deadline(claimed)
            try:
                output = future.result(timeout=max(0.0, deadline - time.time()) + 1.0)
            except FutureTimeout:
                output = future.result(timeout=5.0)  # the executor noticed the deadline
            output = link_artifacts(self.durable, job_id, output)
            finish_and_announce(self.durable, job_id, self.id, "succeeded", output=output)
            return "succeeded"
        except Stopped as e:
            if e.reason == "timeout":
                self._fail(job_id, "timeout", "the job ran past its deadline")
            else:
                finish_and_announce(self.durable, job_id, self.id, "canceled")
            return e.reason
        except (InvalidRequest, ConvoyError, ModelNotFound, ValueError) as e:
            self._fail(job_id, "invalid_input", str(e))
            return "invalid_input"
        except OutOfMemory as e:
            self._fail(job_id, "gpu_oom", f"out of device memory at a batch of one: {e}")
            return "gpu_oom"
        except FutureTimeout:
            self._fail(job_id, "timeout", "the job ran past its deadline")
            return "timeout"
        except Exception as e:
            log.exception("job %s failed", job_id)
            self._fail(job_id, "internal", f"{type(e).__name__}: {e}")
            return "internal"
        finally:
            self._hold(job_id, -1)
            if not submitted:
                self.batcher.unexpect()
            if job:
                self.jobs_done += 1

    def _canceled_among(self, job_ids: list[str]) -> set[str]:
        try:
            return self.store.canceled_among(job_ids)
        except StoreUnavailable:
            return set()  # a store outage is no reason to stop: the outcome waits for the store

    def _hold(self, job_id: str, delta: int) -> None:
        with self._active_lock:
            self._active[job_id] += delta
            if self._active[job_id] <= 0:
                del self._active[job_id]

    def _fail(self, job_id: str, code: str, message: str) -> None:
        finish_and_announce(self.durable, job_id, self.id, "failed",
                            error={"code": code, "message": message[:2000]})

    def _deadline(self, job: dict[str, Any]) -> float:
        timeout = job.get("timeout_s") or self.settings.job_timeout_s
        return time.time() + min(float(timeout), self.settings.max_job_timeout_s)

    def _item(self, job: dict[str, Any]) -> Item:
        job_id = job["id"]
        entry = self.catalog.get(job["model"])
        data = prepare(job["kind"], job["input"], entry, self.settings.max_image_pixels)
        predictor = self.cache.get(entry)
        deadline = self._deadline(job)

        def wanted() -> str | None:  # cancel flags are read by the batcher, once per batch
            return "timeout" if time.time() > deadline else None

        def on_progress(step: int, total: int) -> None:
            try:
                self.store.set_progress(job_id, step, total)
                self.store.append_event(job_id, "progress", {"step": step, "total": total})
            except StoreUnavailable as e:
                log.warning("job %s: progress %d/%d not recorded (%s)", job_id, step, total, e)

        def on_preview(artifact: Artifact) -> None:
            try:
                link = link_artifacts(self.store, job_id, artifact)
                self.store.append_event(job_id, "preview", link)
            except StoreUnavailable as e:
                log.warning("job %s: preview %s not recorded (%s)", job_id, artifact.name, e)

        return Item(job_id=job_id, predictor=predictor, entry=entry,
                    request=Request(job["kind"], data), wanted=wanted,
                    on_progress=on_progress, on_preview=on_preview)

    # -- heartbeat and reaping -------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.cache.device),
            "models": self.cache.loaded(),
            "memory_bytes": self.cache.memory_bytes(),
            "jobs_done": self.jobs_done,
            "batches": self.batcher.stats.batches,
            "started_at": self.started,
            "stats": self.stats.snapshot(),
        }

    def beat(self) -> None:
        self.store.heartbeat(self.id, self.info(), ttl_s=self.settings.worker_dead_after_s)

    def reap(self) -> int:
        """Hand back the jobs of workers whose heartbeat stopped, and this worker's own jobs
        that no thread runs any more (a run that could not record its outcome); return how
        many."""
        live = {w["id"] for w in self.store.workers()} - {self.id}
        handed = 0
        for job_id, worker in self.store.running_jobs():
            if worker in live:
                continue
            if worker == self.id:
                with self._active_lock:
                    if job_id in self._active:
                        continue
            job = self.store.get(job_id)
            if job is None:
                continue
            if job.get("attempts", 0) >= self.settings.max_attempts:
                finish_and_announce(self.store, job_id, worker, "failed", error={
                    "code": "worker_lost",
                    "message": f"the job's worker was lost {job['attempts']} times"})
                continue
            if self.store.requeue(job_id, worker):
                why = "could not record its outcome" if worker == self.id else "was lost"
                self.store.append_event(job_id, "log", {"message": f"worker {worker} {why};"
                                                        " the job is queued again"})
                self.store.append_event(job_id, "status", {"status": "queued"})
                if self.celery is not None:
                    dispatch(self.celery, job_id, job.get("queue", "convoy"))
                handed += 1
        return handed

    def supervise(self) -> None:
        """Heartbeat every ``heartbeat_s``; reap and purge every few beats (thread body)."""
        beats = 0
        while not self._stop.is_set():
            try:
                self.beat()
                if beats % 3 == 0:
                    handed = self.reap()
                    if handed:
                        log.warning("requeued %d jobs of lost workers", handed)
                if beats % 600 == 0:
                    self.store.purge_expired()
            except StoreUnavailable as e:
                log.warning("heartbeat skipped: %s", e)  # the next beat tries again
            except Exception:
                log.exception("heartbeat failed")
            beats += 1
            self._stop.wait(self.settings.heartbeat_s)

    def start_supervision(self) -> threading.Thread:
        t = threading.Thread(target=self.supervise, name="convoy-heartbeat", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
        try:
            self.store.remove_worker(self.id)
        except Exception:
            log.warning("could not deregister worker %s", self.id)
