"""The device executor: groups concurrent requests into batches and runs them one at a time.

Requests with the same key (model + the predictor's batch key) are grouped up to the
model's ``max_batch``. The executor never idles waiting for a batch to fill: while it runs
one batch the next accumulates; it waits up to ``max_wait_ms`` only while more jobs are
known to be on their way (claimed by this worker but not yet submitted), while they have
lately been arriving faster than one per ``max_wait_ms`` (so one more is likely to come),
or where the key's last batch ran ten times longer than ``max_wait_ms`` (a sampling loop,
for which the wait costs a lone job under a tenth of its time).

Progress and previews are written by a reporter thread, in order, so that a batch's steps
never wait on the store; a job's result is handed over only once its reports are written.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.catalog import ModelEntry
    from models.predictor import Artifact, Predictor, Request
    from models.stepping import Stepper

log = logging.getLogger(__name__)


class Stopped(Exception):
    """A request left its batch: ``reason`` is 'canceled' or 'timeout'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutOfMemory(Exception):
    """A batch of one did not fit on the device."""


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


@dataclass
class Item:
    """One job's request waiting for (or riding in) a batch."""

    job_id: str
    predictor: Predictor
    entry: ModelEntry
    request: Request
    wanted: Callable[[], str | None]  # None while wanted, else why not ('canceled', 'timeout')
    on_preview: Callable[[Artifact], None]
    on_progress: Callable[[int, int], None] | None = None  # where the Batcher has no progress
    future: Future[dict[str, Any]] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    key: Hashable = None
    stepper: Stepper | None = None  # set where the job runs in a step loop (workers/stepper.py)

    def __post_init__(self) -> None:
        self.key = (self.entry.name, self.predictor.batch_key(self.request))


class Reporter:
    """Runs the batch members' progress and preview callbacks on a thread of its own."""

    max_behind = 64  # callbacks a job may have queued before its batch waits for them

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[list[str], Callable[[], None]]] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._behind: dict[str, int] = {}  # job id → callbacks queued, not yet run
        threading.Thread(target=self._loop, name="convoy-reporter", daemon=True).start()

    def put(self, job_ids: str | list[str], call: Callable[[], None]) -> None:
        """Queue ``call``, which reports for ``job_ids`` (one job, or a batch's members)."""
        ids = [job_ids] if isinstance(job_ids, str) else job_ids
        with self._cv:
            self._cv.wait_for(lambda: all(self._behind.get(j, 0) < self.max_behind for j in ids))
            for j in ids:
                self._behind[j] = self._behind.get(j, 0) + 1
        self._queue.put((ids, call))

    def settle(self, job_id: str, timeout: float = 60.0) -> None:
        """Wait until every callback queued for the job has run."""
        with self._cv:
            self._cv.wait_for(lambda: job_id not in self._behind, timeout)

    def _loop(self) -> None:
        while True:
            ids, call = self._queue.get()
            try:
                call()
            except Exception:
                log.exception("jobs %s: a progress report failed", ", ".join(ids))
            with self._cv:
                for job_id in ids:
                    left = self._behind[job_id] - 1
                    if left:
                        self._behind[job_id] = left
                    else:
                        del self._behind[job_id]
                self._cv.notify_all()


@dataclass
class BatchStats:
    batches: int = 0  # batches run so far
    items: int = 0  # requests in them


class Batcher:
    """``canceled(job_ids)`` answers which of a batch's jobs must stop (a set of canceled
    ones, or a dict: job id → why): it is asked once before each batch and then at most
    every ``poll_s`` between steps, for the whole batch at once (each member's ``wanted``
    answers the rest, such as its deadline). ``on_device(job_ids)``, where given, is told
    of a batch just before it runs, and answers as ``canceled`` does, in place of the
    cancel read before the batch.
    ``progress(job_ids, step, total)``, where given, reports a step for all the batch's
    members in one call instead of each member's ``on_progress``. With ``stepping``, the
    jobs of models that offer a stepper run in step loops (``workers/stepper.py``).
    With ``lone_threads``, a batch of one on the CPU with nothing waiting behind it runs
    with that many torch threads, and every other batch with the count it found."""

    def __init__(self, enabled: bool = True, on_batch: Callable[[int], None] | None = None,
                 canceled: Callable[[list[str]], set[str] | dict[str, str]] | None = None,
                 poll_s: float = 0.005,
                 progress: Callable[[list[str], int, int], None] | None = None,
                 on_device: Callable[[list[str]], dict[str, str]] | None = None,
                 on_measured: Callable[[list[Item], float], None] | None = None,
                 stepping: bool = False, lone_threads: int | None = None) -> None:
        self.enabled = enabled
        self.lone_threads = lone_threads
        self._busy_threads: int | None = None  # torch's count outside lone batches
        self.stepping = stepping and enabled
        self._steppers: weakref.WeakKeyDictionary[Predictor, Stepper | None] = (
            weakref.WeakKeyDictionary())
        self.on_device = on_device
        self.on_measured = on_measured  # (a batch's items, the seconds its forward pass took)
        self.progress = progress
        self.on_batch = on_batch
        self.canceled = canceled
        self.poll_s = poll_s
        self._polled = 0.0
        self.stats = BatchStats()
        self.reporter = Reporter()
        self._pending: list[Item] = []
        self._last_run: dict[Hashable, float] = {}  # batch key → seconds its last batch ran
        self._incoming = 0
        self._gap = 1.0  # moving average of the seconds between submissions
        self._last = time.monotonic()
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="convoy-executor", daemon=True)
        self._thread.start()

    # -- the job threads' side ---------------------------------------------------------------
    def expect(self) -> None:
        """A job is on its way (claimed, loading its model)."""
        with self._cv:
            self._incoming += 1

    def unexpect(self) -> None:
        with self._cv:
            self._incoming = max(0, self._incoming - 1)
            self._cv.notify_all()

    def submit(self, item: Item) -> Future[dict[str, Any]]:
        with self._cv:
            if self.stepping:
                if item.predictor not in self._steppers:  # one per model: it keeps schedulers
                    self._steppers[item.predictor] = item.predictor.stepper()
                stepper = self._steppers[item.predictor]
                key = None if stepper is None else stepper.key(item.request)
                if key is not None:
                    item.stepper, item.key = stepper, (item.entry.name, "steps", key)
            now = time.monotonic()
            self._gap += 0.2 * ((now - self._last) - self._gap)
            self._last = now
            self._pending.append(item)
            self._incoming = max(0, self._incoming - 1)
            self._cv.notify_all()
        return item.future

    # -- the executor --------------------------------------------------------------------------
    def _take(self) -> list[Item]:
        with self._cv:
            while not self._pending:
                self._cv.wait()
            first = self._pending[0]
            limit = max(1, first.entry.max_batch) if self.enabled else 1
            max_wait = first.entry.max_wait_ms / 1000.0
            deadline = first.enqueued + max_wait
            # Waiting max_wait for company is always worth it where a batch runs ten times
            # longer than that (a sampling loop): it costs a lone job under a tenth.
            patient = self._last_run.get(first.key, 0.0) >= 10 * max_wait
            if first.stepper is not None:  # no wait: the others join its loop at a later step
                deadline = time.monotonic()
            while True:
                same = [p for p in self._pending if p.key == first.key][:limit]
                left = deadline - time.monotonic()
                arriving = self._incoming > 0 or self._gap < max_wait or patient
                if len(same) >= limit or left <= 0 or not arriving:
                    break
                self._cv.wait(left)
            for p in same:
                self._pending.remove(p)
            return same

    def more(self, key: Hashable, room: int) -> list[Item]:
        """Up to ``room`` waiting items of ``key``, for a running step loop; none while an
        item of another key waits (the loop then drains, and that item goes next)."""
        with self._cv:
            if room <= 0 or any(p.key != key for p in self._pending):
                return []
            same = self._pending[:room]
            del self._pending[:room]
            return same

    def _loop(self) -> None:
        from workers.stepper import StepRun  # it drives this executor's internals

        while True:
            items = self._take()
            try:
                if items[0].stepper is not None:
                    StepRun(self, items).run()
                else:
                    self._run_safe(items)
            except BaseException as e:  # never let the executor die with futures unresolved
                for it in items:
                    self._resolve(it, error=e)
                if not isinstance(e, Exception):
                    raise

    def _resolve(self, it: Item, result: dict[str, Any] | None = None,
                 error: BaseException | None = None) -> None:
        """Hand the job its outcome, once its progress and previews are written."""
        self.reporter.settle(it.job_id)
        if it.future.done():
            return
        if error is not None:
            it.future.set_exception(error)
        else:
            it.future.set_result(result)  # type: ignore[arg-type]

    def _stopped(self, items: list[Item], fresh: bool) -> list[str | None]:
        """Why each item is not wanted any more (None: it is); the cancel flags are read
        when ``fresh`` or when ``poll_s`` has passed since they last were."""
        flagged: set[str] | dict[str, str] = set()
        now = time.monotonic()
        if self.canceled is not None and (fresh or now - self._polled >= self.poll_s):
            self._polled = now
            flagged = self.canceled([it.job_id for it in items])
        if isinstance(flagged, set):
            flagged = dict.fromkeys(flagged, "canceled")
        return [flagged.get(it.job_id) or it.wanted() for it in items]

    def _starting(self, items: list[Item]) -> list[str | None]:
        """Why each item of a batch about to run must not (None: it runs). Where
        ``on_device`` is given, it marks the batch and answers in one store step;
        otherwise the cancel flags are read fresh."""
        if self.on_device is None:
            return self._stopped(items, fresh=True)
        self._polled = time.monotonic()
        stopped = self.on_device([it.job_id for it in items])
        return [stopped.get(it.job_id) or it.wanted() for it in items]

    def _run_safe(self, items: list[Item]) -> None:
        live = []
        for it, reason in zip(items, self._starting(items), strict=True):
            if reason:
                self._resolve(it, error=Stopped(reason))
            else:
                live.append(it)
        if not live:
            return
        try:
            results = self._predict(live)
        except Exception as e:
            if _is_oom(e):
                _free()
                if len(live) == 1:
                    self._resolve(live[0], error=OutOfMemory(str(e)[:300]))
                    return
                log.warning("out of memory at batch %d: splitting", len(live))
                half = len(live) // 2
                self._run_safe(live[:half])
                self._run_safe(live[half:])
                return
            if len(live) == 1:
                self._resolve(live[0], error=e)
                return
            log.warning("batch of %d failed (%s): running its members one by one", len(live), e)
            for it in live:
                self._run_safe([it])
            return
        for it, result in zip(live, results, strict=True):
            if it.future.done():
                continue
            if result is None:
                self._resolve(it, error=Stopped(it.wanted() or "canceled"))
            else:
                self._resolve(it, result)

    def _predict(self, items: list[Item]) -> list[dict[str, Any] | None]:
        alive = list(items)

        def on_step(step: int, total: int,
                    previews: Sequence[Artifact | None] | None = None) -> list[bool]:
            keep: list[bool] = []
            reasons = self._stopped(alive, fresh=False)
            for idx, it in enumerate(alive):
                reason = reasons[idx]
                if reason:
                    self._resolve(it, error=Stopped(reason))
                    keep.append(False)
                    continue
                if self.progress is None and it.on_progress is not None:
                    self.reporter.put(it.job_id, functools.partial(it.on_progress, step, total))
                if previews is not None and idx < len(previews) and previews[idx] is not None:
                    self.reporter.put(it.job_id, functools.partial(it.on_preview, previews[idx]))
                keep.append(True)
            alive[:] = [it for it, k in zip(alive, keep, strict=True) if k]
            if self.progress is not None and alive:
                ids = [it.job_id for it in alive]
                self.reporter.put(ids, functools.partial(self.progress, ids, step, total))
            return keep

        self.stats.batches += 1
        self.stats.items += len(items)
        if self.on_batch is not None:
            self.on_batch(len(items))
        predictor = items[0].predictor
        self._set_threads(predictor, len(items))
        started = time.monotonic()
        results = predictor.predict([it.request for it in items], on_step=on_step)
        self._last_run[items[0].key] = time.monotonic() - started
        if self.on_measured is not None:
            self.on_measured(items, self._last_run[items[0].key])
        if len(results) != len(items):
            raise RuntimeError(f"{predictor.entry.name} returned {len(results)} results for "
                               f"{len(items)} requests")
        return results

    def _set_threads(self, predictor: Predictor, size: int) -> None:
        """Every core for a lone request on the CPU, the usual count otherwise (torch's
        count is the process's: only the executor changes it, between forwards)."""
        if self.lone_threads is None:
            return
        import torch

        lone = (size == 1 and not self._pending and not self._incoming
                and torch.device(predictor.device).type == "cpu")
        if self._busy_threads is None:
            self._busy_threads = torch.get_num_threads()
        want = self.lone_threads if lone else self._busy_threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
