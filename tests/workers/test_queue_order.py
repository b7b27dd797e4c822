"""Who runs next, on SQLite and Redis: priorities, first come first served within one, the
starvation bound, positions that count down, and messages as tokens that run every job
exactly once even when workers pick concurrently."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tests.support.jobs import job, put
from workers.queue_order import Entry, QueueOrder, open_order
from workers.store import Job, JobStore, Outcome
from workers.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def order_of(store: JobStore, starvation_s: float = 300.0) -> QueueOrder:
    order = open_order(store, starvation_s)
    assert order is not None
    return order


def submit(store: JobStore, order: QueueOrder, jid: str, priority: int = 0,
           created: float | None = None, index: bool = True) -> str:
    put(store, job(jid, owner="o", kind="generate", input={}, priority=priority))
    if index:
        order.add([("convoy", Entry(jid, priority, time.time() if created is None else created))])
    return jid


def run_message(store: JobStore, order: QueueOrder, jid: str, worker: str = "w") -> str | None:
    """What a worker does with a message: pick, then claim; the job it started."""
    picked = order.pick([jid], store)[0]
    return picked if isinstance(store.claim([picked], worker)[0], Job) else None


def test_a_high_priority_job_submitted_after_30_low_ones_starts_next(store: JobStore) -> None:
    order = order_of(store)
    lows = [submit(store, order, f"low-{i:02d}") for i in range(30)]
    high = submit(store, order, "high", priority=5)
    assert order.positions("convoy")["high"] == 1
    assert run_message(store, order, lows[0]) == "high"  # the first message runs it
    started = [run_message(store, order, j) for j in [*lows[1:], high]]
    assert started == lows  # then first come first served; high's message runs low-29


def test_a_starved_job_is_promoted_past_higher_priorities(store: JobStore) -> None:
    order = order_of(store, starvation_s=2.0)
    old = submit(store, order, "old", priority=0, created=time.time() - 3.0)
    highs = [submit(store, order, f"high-{i}", priority=9) for i in range(3)]
    assert order.positions("convoy")[old] == 1
    assert run_message(store, order, highs[0]) == old
    order2 = order_of(store, starvation_s=300.0)  # without the bound it would wait
    late = submit(store, order2, "late", priority=0, created=time.time() - 3.0)
    assert order2.positions("convoy")[late] == 4  # behind the three high ones


def test_positions_count_down_as_jobs_start(store: JobStore) -> None:
    order = order_of(store)
    slow = submit(store, order, "slow")
    assert run_message(store, order, slow) == slow
    queued = [submit(store, order, f"q{i:02d}") for i in range(20)]
    seen: dict[str, list[int]] = {j: [] for j in queued}
    for j in queued:
        positions = order.positions("convoy")
        for k, pos in positions.items():
            seen[k].append(pos)
        run_message(store, order, j)
    assert [seen[j][0] for j in queued] == list(range(1, 21))
    for j, series in seen.items():
        assert series == sorted(series, reverse=True) and series[-1] == 1, (j, series)


def test_every_job_runs_once_when_workers_pick_concurrently(store: JobStore) -> None:
    """Tokens balance: messages taken by 4 threads in any order, some of them before their
    job is indexed, run each of 80 jobs of mixed priorities exactly once."""
    order = order_of(store)
    rng = random.Random(7)
    jobs = [submit(store, order, f"j{i:02d}", priority=rng.choice([0, 0, 3, 9]),
                   index=rng.random() > 0.2) for i in range(80)]
    messages = list(jobs)
    rng.shuffle(messages)
    lock = threading.Lock()
    started: list[str] = []

    def worker(name: str) -> None:
        while True:
            with lock:
                if not messages:
                    return
                message = messages.pop()
            got = run_message(store, order, message, name)
            if got is not None:
                with lock:
                    started.append(got)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(started) == sorted(jobs)
    assert order.positions("convoy") == {}


def test_a_job_queued_again_runs_from_its_new_message(store: JobStore) -> None:
    order = order_of(store)
    a = submit(store, order, "a")
    assert run_message(store, order, a, "dead") == a
    assert store.requeue({a: "dead"}) == {a}
    assert run_message(store, order, a, "w2") == a  # the reaper's message


def test_tidy_drops_entries_of_finished_jobs(store: JobStore) -> None:
    order = order_of(store)
    a = submit(store, order, "a")
    store.claim([a], "w")
    store.finish([Outcome(a, "succeeded", worker="w")])
    submit(store, order, "b")
    order.tidy()
    assert order.positions("convoy") == {"b": 1}


def test_one_reporter_leads_at_a_time(store: JobStore) -> None:
    order = order_of(store)
    assert order.lead("x", "w1", 5.0) and order.lead("x", "w1", 5.0)
    assert not order.lead("x", "w2", 5.0)
    assert order.lead("x", "w2", 5.0) is False and order.lead("y", "w2", 5.0)


def test_a_message_of_several_jobs_picks_as_messages_of_one_would(store: JobStore) -> None:
    order = order_of(store)
    lows = [submit(store, order, f"low-{i}") for i in range(4)]
    highs = [submit(store, order, f"high-{i}", priority=5) for i in range(2)]
    assert order.pick(lows[:3], store) == [*highs, lows[0]]
    # the messages of the jobs run in their place are tokens: they take the best left
    assert order.pick([highs[0], lows[0]], store) == lows[1:3]
    assert order.pick([highs[1], lows[3]], store) == [lows[3], lows[3]]


def test_redis_picks_a_whole_message_in_one_round_trip(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.store.redis import RedisStore

    store = RedisStore(redis_url)
    order = order_of(store)
    jobs = [submit(store, order, f"j{i}") for i in range(10)]
    calls: list[object] = []
    real = order.r.execute_command  # type: ignore[attr-defined]
    monkeypatch.setattr(order.r, "execute_command",  # type: ignore[attr-defined]
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert order.pick(jobs, store) == jobs
    assert len(calls) == 1


def test_queue_estimates_read_each_queued_job_once(store: JobStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.queue_eta import QueueEstimator

    order = order_of(store)
    jobs = [submit(store, order, f"q{i}") for i in range(5)]
    estimator = QueueEstimator(store, order, ttl_s=0.0)
    reads: list[str] = []
    real = store.get
    monkeypatch.setattr(store, "get", lambda job_id: reads.append(job_id) or real(job_id))
    assert estimator.state("convoy").models == dict.fromkeys(jobs, "m")
    assert sorted(reads) == jobs
    run_message(store, order, jobs[0])  # it leaves the queue (and runs)
    reads.clear()
    later = submit(store, order, "later")
    assert estimator.state("convoy").models == dict.fromkeys([*jobs[1:], later], "m")
    assert reads == [later]  # the newcomer only
