"""The API's submission plumbing without HTTP: submissions that arrive while a group is
being written go out together in the next one; finishes wake the requests that wait."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.lifecycle import Lifecycle
from service.streams import EventHub
from service.submitter import BrokerDown, Submitter
from service.waiters import Waiters
from tests.support.jobs import NO_LIMIT, job
from workers.settings import Settings
from workers.store import Job, Outcome
from workers.store.base import QueueFull
from workers.store.sqlite import SQLiteStore


class SlowStore(SQLiteStore):
    """Records the size of each group it is asked to accept, and takes its time."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.groups: list[int] = []

    def accept(self, jobs: list[Job], *args: Any, **kwargs: Any) -> Any:
        self.groups.append(len(jobs))
        time.sleep(0.05)
        return super().accept(jobs, *args, **kwargs)


def test_submissions_that_arrive_together_share_a_store_step_and_a_message(tmp_path: Path
                                                                           ) -> None:
    store = SlowStore(tmp_path / "s.db")
    sent: list[tuple[list[str], str]] = []
    submitter = Submitter(store, lambda ids, queue: sent.append((ids, queue)), 100, 100)

    async def main() -> list[tuple[Job, bool]]:
        first = asyncio.ensure_future(submitter.submit(job("j0")))
        await asyncio.sleep(0.01)  # j0's group is being written ...
        rest = [asyncio.ensure_future(submitter.submit(job(f"j{i}"))) for i in range(1, 11)]
        return [await first] + [await r for r in rest]  # ... the others wait for the next

    results = asyncio.run(main())
    assert [r[0].id for r in results] == [f"j{i}" for i in range(11)]
    assert all(created for _, created in results)
    assert store.groups == [1, 10]
    assert sent == [(["j0"], "convoy"), ([f"j{i}" for i in range(1, 11)], "convoy")]
    assert store.count_queued() == 11


def test_a_group_enters_the_queue_order_in_one_step_before_its_records(tmp_path: Path
                                                                      ) -> None:
    from workers.queue_order import open_order

    store = SlowStore(tmp_path / "s.db")
    order = open_order(store, 300.0)
    assert order is not None
    indexed: list[list[str]] = []

    def index(jobs: list[Job]) -> None:
        assert all(store.get(j.id) is None for j in jobs)  # before the records (and message)
        indexed.append([j.id for j in jobs])
        Lifecycle(Settings(data_dir=tmp_path), order, None, None).enqueued(jobs)

    submitter = Submitter(store, lambda ids, queue: None, 100, 100, index)

    async def main() -> None:
        first = asyncio.ensure_future(submitter.submit(job("j0")))
        await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(submitter.submit(job(f"j{i}"))) for i in range(1, 6)]
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert indexed == [["j0"], [f"j{i}" for i in range(1, 6)]]
    assert list(order.positions("convoy")) == [f"j{i}" for i in range(6)]


def test_a_job_over_its_limit_is_refused_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    sent: list[tuple[list[str], str]] = []
    submitter = Submitter(store, lambda ids, queue: sent.append((ids, queue)), 1, 100)

    async def main() -> list[Any]:
        return await asyncio.gather(submitter.submit(job("a")),
                                    submitter.submit(job("b")),
                                    submitter.submit(job("c", owner="bob")),
                                    return_exceptions=True)

    a, b, c = asyncio.run(main())
    assert a[1] and c[1]
    assert isinstance(b, QueueFull) and b.whose == "owner"
    assert sorted(i for ids, _ in sent for i in ids) == ["a", "c"]  # only recorded jobs


def test_jobs_whose_message_cannot_be_sent_fail(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")

    def down(ids: list[str], queue: str) -> None:
        raise ConnectionError("broker down")

    submitter = Submitter(store, down, 100, 100)
    with pytest.raises(BrokerDown):
        asyncio.run(submitter.submit(job("a")))
    failed = store.get("a")
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and failed.error["code"] == "internal"


class AnnouncingStore(SQLiteStore):
    """A store that says it announces finishes; the test decides when it does."""

    announces_finishes = True

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.listener: Any = None
        self.listening = threading.Event()

    def listen_finished(self, on_finished: Any, stop: threading.Event) -> None:
        self.listener = on_finished
        self.listening.set()
        stop.wait()


def test_a_finish_wakes_its_waiting_request(tmp_path: Path) -> None:
    store = AnnouncingStore(tmp_path / "s.db")
    ((record, _),) = store.accept([job("a")], NO_LIMIT, NO_LIMIT)
    waiters = Waiters(store, EventHub(store))

    async def main() -> tuple[Job | None, float]:
        waiters.start()
        assert await asyncio.to_thread(store.listening.wait, 5)
        future = waiters.expect("a")
        assert future is not None
        threading.Timer(0.1, store.listener, args=([("a", {"status": "succeeded",
                                                            "output": {"k": 1}})],)).start()
        t0 = time.monotonic()
        done = await waiters.wait(record, future, 10)
        waiters.forget("a", future)
        return done, time.monotonic() - t0

    done, took = asyncio.run(main())
    waiters.stop()
    assert done is not None and done.status == "succeeded" and done.output == {"k": 1}
    assert done.id == "a" and done.kind == "classify"  # the fixed fields are kept
    assert took < 1.0  # woken by the announcement, not by a recheck
    assert not waiters._waiting


def test_a_missed_announcement_only_delays_the_answer(tmp_path: Path) -> None:
    store = AnnouncingStore(tmp_path / "s.db")
    ((record, _),) = store.accept([job("a")], NO_LIMIT, NO_LIMIT)
    store.claim(["a"], "w1")
    waiters = Waiters(store, EventHub(store))
    waiters.recheck_s = 0.2

    async def main() -> Job | None:
        waiters.start()
        future = waiters.expect("a")
        threading.Timer(0.1, store.finish, args=([Outcome(
            "a", "failed", error={"code": "internal", "message": "x"}, worker="w1")],)).start()
        try:
            return await waiters.wait(record, future, 10)  # never announced: found on a recheck
        finally:
            waiters.forget("a", future)

    done = asyncio.run(main())
    waiters.stop()
    assert done is not None and done.status == "failed"


def test_a_wait_that_runs_out_answers_the_latest_record(tmp_path: Path) -> None:
    store = AnnouncingStore(tmp_path / "s.db")
    ((record, _),) = store.accept([job("a")], NO_LIMIT, NO_LIMIT)
    waiters = Waiters(store, EventHub(store))
    waiters.recheck_s = 0.1

    async def main() -> Job | None:
        waiters.start()
        future = waiters.expect("a")
        try:
            return await waiters.wait(record, future, 0.35)
        finally:
            waiters.forget("a", future)

    done = asyncio.run(main())
    waiters.stop()
    assert done is not None and done.status == "queued"
