"""The worker runtime: runs one job (claim, model, batch, artifacts, outcome), keeps the
worker's heartbeat, and hands the jobs of dead workers back to the queue."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.blobs import BlobStore, open_blobs
from core.celery_app import dispatch, waiting_messages
from core.cluster_stats import open_cluster_stats
from core.contract import FINETUNE_QUEUE, IMAGE_FIELDS, pixel_limit, prepare
from core.errors import (
    ConvoyError,
    GpuOutOfMemory,
    Internal,
    InvalidInput,
    TimedOut,
    WorkerLost,
    job_error,
)
from core.inputs import load_inputs
from core.metering import open_meter, shares
from core.queue_order import open_order
from core.settings import Settings, new_id
from core.store import Job, JobStore, Outcome, StoreUnavailable
from core.store.base import StaleClaim
from core.store.patient import patient
from core.user_models import LocalWeights, open_user_models
from models.catalog import Catalog, ModelNotFound
from models.predictor import Artifact, InvalidRequest, Request
from workers.artifacts import generation_parameters, store_artifacts
from workers.batcher import Batcher, Item, OutOfMemory, Stopped
from workers.stats import WorkerStats
from workers.worker import lone_threads

if TYPE_CHECKING:
    from celery import Celery

    from models.catalog import ModelEntry
    from workers.cache import ModelCache

log = logging.getLogger(__name__)


SAVE_TOTALS_EVERY = 5  # heartbeats between saves of this worker's counters to the store
CANCEL_POLL_S = 0.005  # how often a running job's cancel flag is read: about every step


def _seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds between two ISO timestamps of the store (None if either is missing)."""
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def failure(e: Exception) -> ConvoyError:
    """The error of the taxonomy that stands for what ended a run. A model says that a
    request is the caller's fault with ``InvalidRequest``; any other exception it raises
    (a bare ValueError, a KeyError) is a bug of the service: ``Internal``."""
    if isinstance(e, ConvoyError):
        return e
    if isinstance(e, InvalidRequest | ModelNotFound):
        return InvalidInput(str(e))
    if isinstance(e, OutOfMemory):
        return GpuOutOfMemory(f"out of device memory at a batch of one: {e}")
    if isinstance(e, FutureTimeout) or (isinstance(e, Stopped) and e.reason == "timeout"):
        return TimedOut("the job ran past its deadline")
    return Internal(f"{type(e).__name__}: {e}")


@dataclass
class _Run:
    """One job of ``run_jobs`` on its way: claimed, submitted, then ended with an outcome."""

    id: str
    worker: str
    job: Job | None = None
    claimed_at: float | None = None
    deadline: float = 0.0
    future: Future[dict[str, Any]] | None = None
    report: str | None = None  # what run_jobs reports
    outcome: Outcome | None = None  # what to record (None: nothing, the claim is over)

    def end(self, report: str, status: str, output: dict[str, Any] | None = None,
            error: dict[str, Any] | None = None) -> None:
        self.report = report
        self.outcome = Outcome(self.id, status, output=output, error=error, worker=self.worker,
                               token=self.token)

    def fail(self, error: ConvoyError) -> None:
        self.end(error.code, "failed", error=job_error(error))

    @property
    def token(self) -> int | None:
        return None if self.job is None else self.job.token


class WorkerRuntime:
    def __init__(self, settings: Settings, store: JobStore, catalog: Catalog, cache: ModelCache,
                 celery: Celery | None = None, name: str | None = None,
                 blobs: BlobStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs or open_blobs(settings)  # inputs, previews and outputs
        self.catalog = catalog
        self.cache = cache
        self.celery = celery
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self.stats = WorkerStats()
        self.batcher = Batcher(enabled=settings.batching, on_batch=self.stats.batch,
                               canceled=self._canceled_among, poll_s=CANCEL_POLL_S,
                               progress=self._progress, on_device=self._on_device,
                               on_measured=self._measured, stepping=settings.step_batching,
                               lone_threads=lone_threads(settings))
        self.queues: list[str] = []  # the queues this worker takes (in its heartbeat)
        self.order = open_order(store, settings.starvation_s)
        self.meter = open_meter(store, settings.quota_period_s)
        self._device_s: dict[str, float] = {}  # job id → device-seconds not yet recorded
        self.cluster = open_cluster_stats(store)
        self._beats = 0
        self.jobs_done = 0
        self.started = time.time()
        self._stop = threading.Event()
        # Outcomes wait out a store outage; progress and previews are dropped during one.
        self.durable = patient(store, settings.store_patience_s)
        self._active: Counter[str] = Counter()  # jobs a thread of this process is running
        self._tokens: dict[str, int] = {}  # job id → the token of this process's claim
        self._rescued: dict[str, float] = {}  # job id → when rescue_stranded sent it again
        self._rescue_every = max(1, round(settings.stranded_after_s / 2 / settings.heartbeat_s))
        self._active_lock = threading.Lock()
        self.user_models = open_user_models(store)  # fine-tuned models, served at once
        self.local_weights = LocalWeights(settings.data_dir / "user-models", self.blobs)
        self._training: Any = None  # workers.finetune.Training, made at the first finetune

    # -- jobs ----------------------------------------------------------------------------------
    def run_job(self, job_id: str) -> str:
        """Run a job to its end; return what happened (for logs and tests)."""
        return self.run_jobs([job_id])[0]

    def run_jobs(self, job_ids: list[str]) -> list[str]:
        """Run jobs that came in one message to their ends, together: one store step claims
        them all, their requests go to the batcher at once, and the outcomes of each batch
        are recorded in one store step as soon as it ends. A job that is not queued any more
        (a redelivered message) is skipped. Returns what happened to each (for logs and
        tests)."""
        if self.order is not None:  # the best queued jobs, not necessarily the message's
            job_ids = list(dict.fromkeys(self.order.pick(job_ids, self.store)))
        runs = [_Run(j, self.id) for j in job_ids]
        for run in runs:
            self.batcher.expect()
            self._hold(run.id, +1)
        try:
            for run, claimed in zip(runs, self.durable.claim(job_ids, self.id), strict=True):
                if isinstance(claimed, str):
                    run.report = "missing" if claimed == "missing" else f"skipped ({claimed})"
                else:
                    run.job, run.claimed_at = claimed, time.monotonic()
                    with self._active_lock:
                        self._tokens[run.id] = claimed.token
                    self._start(run)
            self._record(runs)  # those over before starting
            waiting = {r.future: r for r in runs if r.future is not None}
            while waiting:  # record each batch's jobs as soon as that batch is over
                left = min(r.deadline for r in waiting.values()) - time.time()
                done, _ = wait_futures(waiting, timeout=max(0.0, left) + 1.0,
                                       return_when=FIRST_COMPLETED)
                over = [waiting.pop(f) for f in done] or [
                    waiting.pop(f) for f, r in list(waiting.items())
                    if r.deadline + 1.0 <= time.time()]
                for run in over:
                    self._collect(run)
                self._record(over)
        finally:
            for run in runs:
                self._hold(run.id, -1)
                if run.job is not None:
                    with self._active_lock:
                        if self._tokens.get(run.id) == run.token:
                            del self._tokens[run.id]
                if run.future is None:
                    self.batcher.unexpect()
                if run.job is not None:
                    self.jobs_done += 1
                    self._count(run)
        return [r.report or "internal" for r in runs]

    def _record(self, runs: list[_Run]) -> None:
        ended = [r for r in runs if r.outcome is not None]  # a lost claim records nothing
        if ended:
            self._charge_device_s(ended)
            self.durable.finish([r.outcome for r in ended if r.outcome is not None])

    def _start(self, run: _Run) -> None:
        """Hand a claimed job's request to the batcher, unless it is over before it starts."""
        job = run.job
        assert job is not None
        if job.cancel_requested:  # the record carries the flag: no extra read
            run.end("canceled", "canceled")
        elif job.attempts > self.settings.max_attempts:
            run.fail(WorkerLost(f"the job ended its worker {job.attempts - 1} times"))
        else:
            try:
                run.deadline = self._deadline(job)
                if job.kind == "finetune":  # minutes on the device: not a batch
                    run.future = self._train(job, run)
                    self.batcher.unexpect()
                    return
                run.future = self.batcher.submit(self._item(job, run.deadline))
            except Exception as e:
                self._failed(run, e)

    def _collect(self, run: _Run) -> None:
        """Take the result of a job whose batch is over or whose deadline has passed (the
        executor notices a deadline within a step: it gets 5 s more), and store its
        artifacts."""
        assert run.future is not None
        try:
            output = run.future.result(timeout=5.0)
            assert run.job is not None
            if run.job.kind == "finetune":  # its device time, as a batch's is measured
                with self._active_lock:
                    self._device_s[run.id] = float(output.get("train_seconds") or 0.0)
            params = generation_parameters(run.job, self._entry(run.job))
            run.end("succeeded", "succeeded", output=store_artifacts(
                self.blobs, run.id, output, params, charge=self._charge(run.id, run.token)))
        except Exception as e:
            self._failed(run, e)

    def _failed(self, run: _Run, e: Exception) -> None:
        if isinstance(e, StaleClaim) or (isinstance(e, Stopped) and e.reason == "lost"):
            log.warning("job %s: handed to another run meanwhile; this run stops", run.id)
            run.report, run.outcome = "lost", None
        elif isinstance(e, Stopped) and e.reason == "canceled":
            run.end("canceled", "canceled")
        else:
            error = failure(e)
            if isinstance(error, Internal):
                log.error("job %s failed", run.id, exc_info=e)
            run.fail(error)

    def _count(self, run: _Run) -> None:
        job = run.job
        assert job is not None
        wait = _seconds_between(job.created_at, job.started_at)
        status = run.outcome.status if run.outcome is not None else None
        self.stats.job(job.kind, job.model, status or run.report or "failed",
                       queue_wait_s=wait,
                       run_s=None if run.claimed_at is None
                       else time.monotonic() - run.claimed_at)

    def _charge(self, job_id: str, token: int | None, durable: bool = True
                ) -> Callable[[int], None]:
        """Count a blob's bytes against the job's owner before it is written (under the
        run's claim: a stale run writes nothing). Outputs wait out a store outage."""
        store = self.durable if durable else self.store
        return lambda size: store.count_blob(job_id, size, token=token)

    def _measured(self, items: list[Item], seconds: float) -> None:
        """A batch's forward pass took ``seconds``: each member's share, by images asked for."""
        self.stats.measured(items[0].entry.name, seconds, len(items))
        weights = [it.request.input.n for it in items]
        with self._active_lock:
            for it, share in zip(items, shares(weights, seconds), strict=True):
                self._device_s[it.job_id] = self._device_s.get(it.job_id, 0.0) + share

    def _charge_device_s(self, runs: list[_Run]) -> None:
        """Write the device-seconds of jobs about to be recorded (before their outcome, so
        that a finished record shows them)."""
        with self._active_lock:
            spent = {r.id: self._device_s.pop(r.id, 0.0) for r in runs}
        charges = [(r.id, r.job.owner, r.job.model, spent[r.id]) for r in runs
                   if r.job is not None and spent[r.id] > 0]
        if self.meter is not None and charges:
            try:
                self.meter.charge(charges)
            except StoreUnavailable as e:
                log.warning("device-seconds of %d jobs not recorded (%s)", len(charges), e)

    def _claims(self, job_ids: list[str]) -> dict[str, int]:
        with self._active_lock:
            return {j: self._tokens[j] for j in job_ids if j in self._tokens}

    def _progress(self, job_ids: list[str], step: int, total: int) -> None:
        claims = self._claims(job_ids)
        try:
            self.store.progress(claims, step, total)
        except StoreUnavailable as e:
            log.warning("progress %d/%d of %d jobs not recorded (%s)", step, total,
                        len(job_ids), e)

    def _on_device(self, job_ids: list[str]) -> dict[str, str]:
        """Mark a batch's runs as on the device before it runs (a worker lost from now on
        is charged an attempt for them), in the same store step as reading which must not
        start: 'canceled', or 'lost' where the claim is over. A store that does not answer
        is no reason to hold the device: the batch runs unmarked."""
        try:
            return self.store.start_on_device(self._claims(job_ids))
        except StoreUnavailable as e:
            log.warning("batch of %d not marked on the device (%s)", len(job_ids), e)
            return {}

    def _canceled_among(self, job_ids: list[str]) -> dict[str, str]:
        """Why runs of a batch must stop: 'canceled', or 'lost' where the job was handed to
        another run (this worker was taken for dead while it stalled)."""
        try:
            return self.store.stopped_among(self._claims(job_ids))
        except StoreUnavailable:
            return {}  # a store outage is no reason to stop: the outcome waits for the store

    def _hold(self, job_id: str, delta: int) -> None:
        with self._active_lock:
            self._active[job_id] += delta
            if self._active[job_id] <= 0:
                del self._active[job_id]

    def _entry(self, job: Job) -> ModelEntry:
        """The job's model: the catalog's, else the owner's fine-tuned model (its weights
        fetched from the blob store once)."""
        try:
            return self.catalog.get(job.model)
        except ModelNotFound:
            record = (None if self.user_models is None
                      else self.user_models.get(job.owner, job.model))
            if record is None:
                raise
            return self.local_weights.entry(record)

    def _train(self, job: Job, run: _Run) -> Future[dict[str, Any]]:
        """Hand a finetune job to this process's training thread (one run at a time). Its
        deadline counts from the start of its training: it may wait for the run ahead."""
        if self._training is None:
            from workers.finetune import Training

            if self.user_models is None:
                raise ConvoyError(f"this worker's store ({type(self.store).__name__}) keeps "
                                  "no models: it cannot run finetune jobs")
            self._training = Training(self.store, self.blobs, self.catalog, self.user_models,
                                      self.cache.device)
        timeout = run.deadline - time.time()
        run.deadline += self.settings.max_job_timeout_s

        def on_start() -> bool:  # on the device now (a worker lost from here costs an attempt)
            return not self._on_device([job.id])

        return self._training.submit(job, timeout, on_start)  # type: ignore[no-any-return]

    def _deadline(self, job: Job) -> float:
        timeout = job.timeout_s or self.settings.job_timeout_s
        return time.time() + min(float(timeout), self.settings.max_job_timeout_s)

    def _item(self, job: Job, deadline: float) -> Item:
        """The job's request for the batcher (its progress goes through ``_progress``, for
        the whole batch at once). A model that refuses to load (its weights are not
        safetensors, its checksum differs: the ``ValueError`` of a load) cannot serve the
        job: ``InvalidInput``, as for a model the catalog does not have."""
        job_id = job.id
        entry = self._entry(job)
        data = prepare(job.kind, load_inputs(job.input, IMAGE_FIELDS, self.blobs), entry,
                       pixel_limit(entry, self.settings.max_image_pixels,
                                   self.settings.input_scale))
        try:
            predictor = self.cache.get(entry)
        except ValueError as e:
            raise InvalidInput(f"model {entry.name} cannot be loaded: {e}") from e

        def wanted() -> str | None:  # cancel flags are read by the batcher, once per batch
            return "timeout" if time.time() > deadline else None

        token = job.token

        def on_preview(artifact: Artifact) -> None:
            try:
                link = store_artifacts(self.blobs, job_id, artifact,
                                       charge=self._charge(job_id, token, durable=False))
                self.store.append_event(job_id, "preview", link, token=token)
            except StaleClaim:
                pass  # handed to another run: the batch drops this job at its next step
            except StoreUnavailable as e:
                log.warning("job %s: preview %s not recorded (%s)", job_id, artifact.name, e)

        request = Request(job.kind, data)
        predictor.preprocess(request)  # here, beside the device's forwards, not between them
        return Item(job_id=job_id, predictor=predictor, entry=entry,
                    request=request, wanted=wanted, on_preview=on_preview)

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
            "queues": self.queues,
        }

    def beat(self) -> None:
        self.store.heartbeat(self.id, self.info(), ttl_s=self.settings.worker_dead_after_s)
        self._beats += 1
        if self.cluster is not None and self._beats % SAVE_TOTALS_EVERY == 1:
            self.cluster.save(self.id, self.stats.snapshot())  # counters that outlive us

    def reap(self) -> int:
        """Hand back the jobs of workers whose heartbeat stopped, and this worker's own jobs
        that no thread runs any more (a run that could not record its outcome); return how
        many. A job lost on the device ``max_attempts`` times fails instead."""
        live = {w["id"] for w in self.store.workers()} - {self.id}
        running = self.store.running_jobs()
        with self._active_lock:
            held = {job_id: worker for job_id, worker in running
                    if worker not in live and not (worker == self.id and job_id in self._active)}
        jobs = {job_id: job for job_id in held if (job := self.store.get(job_id)) is not None}
        charged = {j for j, job in jobs.items() if job.device == job.token}  # lost on the device
        spent = [j for j in charged if jobs[j].attempts >= self.settings.max_attempts]
        self.store.finish([Outcome(j, "failed", worker=held[j], error=job_error(WorkerLost(
            f"the job's worker was lost {jobs[j].attempts} times"))) for j in spent])
        handed = self.store.requeue({j: held[j] for j in jobs if j not in spent})
        for job_id in handed:
            worker = held[job_id]
            why = "could not record its outcome" if worker == self.id else "was lost"
            if job_id not in charged:
                why += " before the job reached the device (no attempt counted)"
            self.store.append_event(job_id, "log", {"message": f"worker {worker} {why};"
                                                    " the job is queued again"})
            if self.celery is not None:
                dispatch(self.celery, job_id, jobs[job_id].queue)
        return len(handed)

    def rescue_stranded(self) -> int:
        """Send again the messages of jobs queued for over ``stranded_after_s`` while their
        queue (one of this worker's catalog) holds no message: their message went with a worker that died between taking
        it and claiming them (or, in embedded mode, was taken and lost). A job whose message
        is in fact alive gets a second one; the claim runs it once. Returns how many."""
        if self.celery is None:
            return 0
        # A queue with messages waiting is left alone (they may be the jobs' own), and asked
        # first: reading the queued jobs costs a read of each, and only a drained queue,
        # whose queued jobs are few, needs it.
        drained = {q for q in {e.queue for e in self.catalog} | {FINETUNE_QUEUE}
                   if waiting_messages(self.celery, q) == 0}
        if not drained:
            return 0
        after = self.settings.stranded_after_s
        now = time.monotonic()
        self._rescued = {j: t for j, t in self._rescued.items() if now - t < after}
        by_queue: dict[str, list[str]] = {}
        for job_id, queue in self.store.stale_queued(after):
            if queue in drained and job_id not in self._rescued:
                by_queue.setdefault(queue, []).append(job_id)
        for queue, ids in by_queue.items():
            for i in range(0, len(ids), 256):
                dispatch(self.celery, ids[i:i + 256], queue)
            log.warning("sent %d stranded jobs of queue %s again", len(ids), queue)
            self._rescued.update(dict.fromkeys(ids, now))
        return sum(len(ids) for ids in by_queue.values())

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
                if beats % self._rescue_every == 0 and beats:
                    self.rescue_stranded()
                if beats % 600 == 0:
                    self.store.purge_expired()
                    self.blobs.sweep(self.settings.retention_s)  # blobs expire with records
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
        if self.cluster is not None:
            try:
                self.cluster.save(self.id, self.stats.snapshot())
            except StoreUnavailable:
                log.warning("final counters of worker %s not saved", self.id)
        try:
            self.store.remove_worker(self.id)
        except Exception:
            log.warning("could not deregister worker %s", self.id)
