"""Records submitted jobs and queues them, writing those that arrive together at once.

Each group is one store step and one broker message per queue: while a group is being
written, the submissions that arrive meanwhile gather into the next one. One client alone
waits for nothing (its group is itself); 64 clients at once share a few round trips and
Celery messages, and the worker takes each message's jobs into the same batches.

Where the store pushes the messages itself (Redis), the jobs and their messages are one
atomic step: a job is never recorded without the message that carries it. Elsewhere the
messages are sent after the records; a message that cannot be sent fails its jobs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio

from workers.celery_app import dispatch, task_message
from workers.errors import Internal, job_error
from workers.store import Job, JobStore, Outcome
from workers.store.base import Accepted, QueueFull

log = logging.getLogger(__name__)


class BrokerDown(RuntimeError):
    """The message that carries a job could not be sent: the job failed."""


class Submitter:
    max_group = 256

    def __init__(self, store: JobStore, send: Callable[[list[str], str], None],
                 max_mine: int, max_all: int,
                 index: Callable[[list[Job]], None] | None = None) -> None:
        self.store = store
        self.send = send
        self.index = index  # puts a group in the queue order before its records and message
        self.max_mine = max_mine
        self.max_all = max_all
        self._pending: list[tuple[Job, asyncio.Future[Accepted]]] = []
        self._writing = False
        self._drainer: asyncio.Task[None] | None = None

    @classmethod
    def for_celery(cls, store: JobStore, app: Any, max_mine: int, max_all: int,
                   index: Callable[[list[Job]], None] | None = None) -> Submitter:
        return cls(store, lambda ids, queue: dispatch(app, ids, queue), max_mine, max_all,
                   index)

    async def submit(self, job: Job) -> tuple[Job, bool]:
        """Record and queue the job; (its record, True), or (the record that holds its id
        already, False). Raises QueueFull, StoreUnavailable or BrokerDown."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if not self._writing:
            self._writing = True
            self._drainer = asyncio.get_running_loop().create_task(self._drain())  # held
        result = await future
        if isinstance(result, QueueFull):
            raise result
        return result

    async def _drain(self) -> None:
        try:
            while self._pending:
                group = self._pending[:self.max_group]
                del self._pending[:self.max_group]
                try:
                    results = await anyio.to_thread.run_sync(self._write, [j for j, _ in group])
                except Exception as e:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():
                        if isinstance(result, Exception) and not isinstance(result, QueueFull):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
        finally:
            self._writing = False

    def _write(self, jobs: list[Job]) -> list[Accepted | Exception]:
        if self.index is not None:
            self.index(jobs)
        queues: dict[str, list[str]] = {}
        for job in jobs:
            queues.setdefault(job.queue, []).append(job.id)
        if self.store.pushes_messages:
            # The message lists every job of the group; a job refused at a limit or whose
            # id was taken is skipped by the worker (it is not queued under that message).
            messages = [task_message(ids, queue) for queue, ids in queues.items()]
            return list(self.store.accept(jobs, self.max_mine, self.max_all, messages))
        results: list[Accepted | Exception] = list(
            self.store.accept(jobs, self.max_mine, self.max_all))
        created = {j.id for j, r in zip(jobs, results, strict=True)
                   if isinstance(r, tuple) and r[1]}
        for queue, ids in queues.items():
            mine = [i for i in ids if i in created]
            if not mine:
                continue
            try:
                self.send(mine, queue)
            except Exception as e:
                log.warning("could not queue %d jobs: %s", len(mine), e)
                error = job_error(Internal("the job could not be queued"))
                self.store.finish([Outcome(j, "failed", error=error) for j in mine])
                failed = BrokerDown(f"the broker does not answer: {type(e).__name__}")
                results = [failed if j.id in mine else r
                           for j, r in zip(jobs, results, strict=True)]
        return results
