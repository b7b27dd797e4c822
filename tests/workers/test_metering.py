"""Device-seconds: each member of a batch is charged its share (by images asked for), the
shares of a batch add up to the time its forward pass took, and the owners' totals and
periods add up, on SQLite and Redis."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from core.metering import open_meter, shares
from core.settings import Settings
from core.store import JobStore
from core.store.sqlite import SQLiteStore
from models.catalog import Catalog
from models.predictor import Predictor, Request, StepCallback
from models.registry import register_predictor
from tests.support.jobs import job, put
from tests.workers.test_batcher import model
from workers.cache import ModelCache
from workers.runtime import WorkerRuntime


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from core.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


@register_predictor("test-timed")
class Timed(Predictor):
    """Sleeps 0.3 s per batch and records the time it measured itself and the batch size."""

    kinds = ("generate",)
    measured: ClassVar[list[tuple[int, float]]] = []

    def load(self) -> None:
        self.gate = threading.Event()

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        started = time.perf_counter()
        self.gate.wait(30)  # the first batch holds the executor while the others gather
        time.sleep(0.3)
        Timed.measured.append((len(batch), time.perf_counter() - started))
        return [{} for _ in batch]


def test_shares_follow_the_weights_and_add_up() -> None:
    assert shares([1, 1, 2], 2.0) == [0.5, 0.5, 1.0]
    assert shares([0, 0], 1.0) == [0.5, 0.5]
    assert shares([], 1.0) == []


def test_a_batchs_device_seconds_add_up_to_its_measured_time(store: JobStore,
                                                             tmp_path: Path) -> None:
    catalog = Catalog({"timed": model("timed", family="test-timed", max_batch=8,
                                      max_wait_ms=50)})
    runtime = WorkerRuntime(Settings(redis_url=None, data_dir=tmp_path), store, catalog,
                            ModelCache(torch.device("cpu")))
    Timed.measured.clear()

    def submit(jid: str, n: int, owner: str) -> str:
        put(store, job(jid, owner=owner, kind="generate", model="timed",
                       input={"n": n, "seed": 1, "steps": 1, "scheduler": "ddpm"}))
        return jid

    first = submit("first", 1, "alice")
    threads = [threading.Thread(target=runtime.run_job, args=(first,))]
    threads[0].start()
    predictor = runtime.cache.get(catalog.get("timed"))
    sizes = {"a": 1, "b": 1, "c": 2, "d": 4}
    time.sleep(0.2)
    for jid, n in sizes.items():
        t = threading.Thread(target=runtime.run_job, args=(submit(jid, n, "bob"),))
        t.start()
        threads.append(t)
    deadline = time.monotonic() + 20
    while len(runtime.batcher._pending) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    predictor.gate.set()
    for t in threads:
        t.join(30)
    assert [size for size, _ in Timed.measured] == [1, 4]
    meter = open_meter(store, runtime.settings.quota_period_s)  # the runtime's periods
    assert meter is not None
    spent = meter.job_seconds(["first", *sizes])
    batch_s = Timed.measured[1][1]
    together = sum(spent[j] for j in sizes)
    assert abs(together - batch_s) <= 0.05 * batch_s, (together, batch_s)
    assert spent["d"] == pytest.approx(4 * spent["a"])
    assert spent["c"] == pytest.approx(2 * spent["b"])
    assert abs(spent["first"] - Timed.measured[0][1]) <= 0.05 * Timed.measured[0][1]
    assert meter.spent("bob") == pytest.approx(together)
    assert meter.totals() == {("alice", "timed"): pytest.approx(spent["first"]),
                              ("bob", "timed"): pytest.approx(together)}
    models = runtime.stats.snapshot()["models"]["timed"]
    assert models["batches"] == 2 and models["job_s"] > 0


def test_owner_periods_are_apart(store: JobStore) -> None:
    meter = open_meter(store, 3600)
    assert meter is not None
    meter.charge([("j1", "alice", "m1", 1.5), ("j2", "alice", "m2", 0.5),
                  ("j3", "bob", "m1", 2.0)])
    meter.charge([("j1", "alice", "m1", 0.25)])
    assert meter.job_seconds(["j1", "j2", "nope"]) == {"j1": 1.75, "j2": 0.5}
    assert meter.spent("alice") == pytest.approx(2.25) and meter.spent("carol") == 0
    assert meter.owner_seconds("alice", 0) == {}  # another period
    meter.charge([("j4", "carol", "m1", 1.0), ("j5", "carol", "m1", 0.5),
                  ("j6", "carol", "m2", 0.125)])  # one owner and model, jobs apart
    assert meter.job_seconds(["j4", "j5"]) == {"j4": 1.0, "j5": 0.5}
    assert meter.spent("carol") == pytest.approx(1.625)
    assert meter.totals()[("carol", "m1")] == pytest.approx(1.5)
