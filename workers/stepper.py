"""Step-level admission: the device executor runs a model's step loop (``models.stepping``)
and lets jobs in and out of it at every step boundary.

Static batches make a generation job that arrives while a batch samples wait for every
step of that batch. For a model whose predictor offers a stepper, the ``Batcher`` hands
its group of jobs here instead of to ``predict``; before each step the loop takes the jobs
of its key that have arrived meanwhile (up to ``max_batch`` members), drops the canceled,
late and lost ones, and hands each job its result as soon as it has run its own last step.

The loop stops admitting while a job of another key waits (another model, or a request
its stepper leaves to static batches): it then only finishes its members, and the
executor serves the waiting job next, as it would after a static batch.

Counters: each step is one forward, so it counts as one batch of its members; a job's
device-seconds are its share (by images) of every step it ran in. A step that fails
(out of memory included) sends its members, from the start, through the static path one
by one, which splits and retries as it always does.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from workers.batcher import Item, Stopped

if TYPE_CHECKING:
    from models.stepping import Member, StepLoop
    from workers.batcher import Batcher

log = logging.getLogger(__name__)


def _hand_over(it: Item, result: dict[str, Any] | None, error: BaseException | None) -> None:
    if it.future.done():
        return
    if error is not None:
        it.future.set_exception(error)
    else:
        it.future.set_result(result)  # type: ignore[arg-type]


def _images(it: Item) -> int:
    return it.request.input.n


class StepRun:
    """One step loop on the executor thread, from its first members until none is left."""

    def __init__(self, batcher: Batcher, items: list[Item]) -> None:
        first = items[0]
        assert first.stepper is not None, "a step run of an item without a stepper"
        self.batcher = batcher
        self.key = first.key
        self.room = max(1, first.entry.max_batch)
        self.loop: StepLoop = first.stepper.loop()
        self.members: list[tuple[Item, Member]] = []
        self.spent: dict[str, float] = {}  # job id → its device-seconds so far
        self.waiting = items

    def run(self) -> None:
        try:
            while True:
                room = self.room - len(self.members) - len(self.waiting)
                self._admit(self.waiting + self.batcher.more(self.key, room))
                self.waiting = []
                if not self.members:
                    return
                if not self._step():
                    return
        except BaseException as e:  # never leave a member's future unresolved
            for it, _ in self.members:
                self.batcher._resolve(it, error=e)
            raise

    def _admit(self, new: list[Item]) -> None:
        """Drop the members no longer wanted and admit the new jobs still wanted and not
        lost, each begun by its stepper. The cancel flags of all of them are read in one
        store step (fresh where jobs join, else at most every ``poll_s``)."""
        b = self.batcher
        current = [it for it, _ in self.members]
        reasons = b._stopped(current + new, fresh=bool(new))
        for (it, member), reason in zip(list(self.members), reasons, strict=False):
            if reason:
                self.loop.drop(member)
                self._leave(it, member, error=Stopped(reason))
        live = []
        for it, reason in zip(new, reasons[len(current):], strict=True):
            if reason:
                b._resolve(it, error=Stopped(reason))
            else:
                live.append(it)
        if live and b.on_device is not None:
            lost = b.on_device([it.job_id for it in live])
            for it in [it for it in live if it.job_id in lost]:
                b._resolve(it, error=Stopped(lost[it.job_id]))
                live.remove(it)
        for it in live:
            assert it.stepper is not None
            try:
                member = it.stepper.begin(it.request)
            except Exception as e:  # noqa: BLE001  the request's fault or the model's: this job only
                b._resolve(it, error=e)
                continue
            self.loop.admit(member)
            self.members.append((it, member))

    def _leave(self, it: Item, member: Member, result: dict[str, Any] | None = None,
               error: BaseException | None = None) -> None:
        """A member leaves: its device-seconds are charged, and its outcome is handed over
        by the reporter, after the progress and previews queued before it (the device
        does not wait for those writes, as it would at every member's end)."""
        self.members = [(i, m) for i, m in self.members if m is not member]
        spent = self.spent.pop(it.job_id, 0.0)
        if self.batcher.on_measured is not None and spent > 0:
            self.batcher.on_measured([it], spent)
        self.batcher.reporter.put(it.job_id, functools.partial(_hand_over, it, result, error))

    def _step(self) -> bool:
        """Run one step; report it; hand finished members their results. False where the
        step failed and its members went to the static path."""
        b = self.batcher
        b.stats.batches += 1
        b.stats.items += len(self.members)
        if b.on_batch is not None:
            b.on_batch(len(self.members))
        started = time.monotonic()
        try:
            finished = self.loop.step()
        except Exception as e:  # noqa: BLE001  (out of memory included)
            log.warning("step loop of %d jobs failed (%s): running them one by one",
                        len(self.members), e)
            stranded = [it for it, _ in self.members]
            self.members = []
            for it in stranded:
                b._run_safe([it])
            return False
        seconds = time.monotonic() - started
        weights = {it.job_id: _images(it) for it, _ in self.members}
        total = sum(weights.values())
        for job_id, w in weights.items():
            self.spent[job_id] = self.spent.get(job_id, 0.0) + seconds * w / total
        self._report()
        done = {id(m) for m in finished}
        for it, member in [(it, m) for it, m in self.members if id(m) in done]:
            try:
                result = it.stepper.finish(member)  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001  this job fails, the others go on
                self._leave(it, member, error=e)
            else:
                self._leave(it, member, result)
        return True

    def _report(self) -> None:
        """Progress of every member at its own step, and the previews it asked for."""
        b = self.batcher
        by_step: dict[tuple[int, int], list[Item]] = {}
        for it, member in self.members:
            by_step.setdefault((member.index, member.total), []).append(it)
            if member.wants_preview:
                preview = it.stepper.preview(member)  # type: ignore[union-attr]
                b.reporter.put(it.job_id, functools.partial(it.on_preview, preview))
        for (step, total), items in by_step.items():
            if b.progress is not None:
                ids = [it.job_id for it in items]
                b.reporter.put(ids, functools.partial(b.progress, ids, step, total))
                continue
            for it in items:
                if it.on_progress is not None:
                    b.reporter.put(it.job_id, functools.partial(it.on_progress, step, total))
