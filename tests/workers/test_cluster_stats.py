"""Worker counters kept in the store: the total over live and gone workers never goes back
when a worker's snapshot is folded into the retired total, on SQLite and Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import cluster_stats
from core.cluster_stats import merge, open_cluster_stats
from core.store import JobStore
from core.store.sqlite import SQLiteStore
from workers.stats import WorkerStats


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from core.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def snapshot(n: int) -> dict:
    stats = WorkerStats()
    for _ in range(n):
        stats.job("generate", "m", "succeeded", queue_wait_s=0.1, run_s=0.2)
    return stats.snapshot()


def test_merge_adds_counters() -> None:
    assert merge({"a": 1, "b": {"c": 2.5}}, {"a": 2, "b": {"c": 1, "d": 3}}) == {
        "a": 3, "b": {"c": 3.5, "d": 3}}


def test_totals_survive_workers_that_are_gone(store: JobStore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = open_cluster_stats(store)
    assert cluster is not None
    cluster.save("w1", snapshot(3))
    cluster.save("w2", snapshot(2))
    before = cluster.totals()
    assert before["jobs"] == {"generate|m|succeeded": 5}
    assert before["by_model"]["run_seconds|generate|m"]["buckets"]["+Inf"] == 5
    assert cluster.fold({"w2"}) == 0  # w1 saved just now: not folded yet
    real = cluster_stats.time.time
    monkeypatch.setattr(cluster_stats.time, "time", lambda: real() + 120)
    assert cluster.fold({"w2"}) == 1  # w1 is gone; w2 lives
    cluster.save("w2", snapshot(4))  # w2 goes on counting
    after = cluster.totals()
    assert after["jobs"] == {"generate|m|succeeded": 7}
    monkeypatch.setattr(cluster_stats.time, "time", lambda: real() + 300)
    assert cluster.fold(set()) == 1  # now w2 is gone too
    assert cluster.totals()["jobs"] == {"generate|m|succeeded": 7}
