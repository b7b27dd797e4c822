"""Delivery guarantees of the worker runtime, in-process: a store outage mid-job loses
nothing, a run that could not record its outcome is handed back, a redelivered finished job
is not run again; the broker takes JSON only; Redis start-up checks. Redis: a redis-server
of the test's own on a free port (never the shared one: its config is changed)."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.fixtures import TEST_CATALOG, free_port
from tests.support.jobs import job, put
from workers.settings import Settings
from workers.store import JobStore, StoreUnavailable
from workers.store.patient import patient
from workers.store.sqlite import SQLiteStore


class Flaky:
    """A store that raises StoreUnavailable while ``down`` is set (for the methods named in
    ``only``, or all of them)."""

    def __init__(self, store: JobStore, only: set[str] | None = None) -> None:
        self.store, self.only = store, only
        self.down = threading.Event()
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set() and (self.only is None or name in self.only):
                self.refused += 1
                raise StoreUnavailable("down for the test")
            return attr(*args, **kwargs)

        return call


def test_patient_store_waits_out_an_outage_then_gives_up(tmp_path: Path) -> None:
    flaky = Flaky(SQLiteStore(tmp_path / "s.db"))
    flaky.down.set()
    threading.Timer(0.3, flaky.down.clear).start()
    patient(cast(JobStore, flaky), patience_s=10).ping()  # returns once the store is back
    assert flaky.refused > 1
    flaky.down.set()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable):
        patient(cast(JobStore, flaky), patience_s=0.3).ping()
    assert time.monotonic() - t0 < 5


@pytest.fixture
def runtime_for(tmp_path: Path) -> Iterator[Any]:
    """Builds a WorkerRuntime (sleepy model, SQLite store) around a given store wrapper."""
    import torch

    import tests.support.plugins  # noqa: F401 - registers the sleepy family
    from models.catalog import Catalog
    from workers.cache import ModelCache
    from workers.runtime import WorkerRuntime

    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TEST_CATALOG.format(marker=tmp_path / "m.txt").replace(
        "step_s = 0.05", "step_s = 0.02"))
    store = SQLiteStore(tmp_path / "convoy.db")

    def make(wrap: Any = None, **settings: Any) -> tuple[Any, JobStore, Any]:
        s = Settings(data_dir=tmp_path, redis_url=None, catalog=[catalog], **settings)
        wrapped = wrap(store) if wrap else store
        rt = WorkerRuntime(s, cast(JobStore, wrapped), Catalog.load(s.catalog),
                           ModelCache(torch.device("cpu")), name="w1")
        return rt, store, wrapped

    yield make
    store.close()


def _submit(store: JobStore, job_id: str, steps: int, timeout_s: float | None = None) -> None:
    put(store, job(job_id, owner="local", kind="generate", model="sleepy", timeout_s=timeout_s,
                   input={"steps": steps, "n": 1, "seed": 1, "scheduler": "dpmpp",
                          "preview_every": 0}))


def _status(store: JobStore, job_id: str) -> str | None:
    found = store.get(job_id)
    return None if found is None else found.status


def _step(store: JobStore, job_id: str) -> int:
    found = store.get(job_id)
    return 0 if found is None or found.progress is None else found.progress["step"]


def _types(store: JobStore, job_id: str) -> list[str]:
    return [e.type for e in store.events(job_id)]


def test_a_store_outage_mid_job_loses_nothing(runtime_for: Any) -> None:
    rt, store, flaky = runtime_for(Flaky)
    _submit(store, "j", steps=30)
    result: list[str] = []
    runner = threading.Thread(target=lambda: result.append(rt.run_job("j")))
    runner.start()
    deadline = time.monotonic() + 120
    while _step(store, "j") < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    flaky.down.set()  # the store goes away mid-job ...
    time.sleep(0.4)
    flaky.down.clear()  # ... and comes back
    runner.join(60)
    job = store.get("j")
    assert result == ["succeeded"] and flaky.refused > 0
    assert job is not None and job.status == "succeeded" and job.attempts == 1
    assert _types(store, "j").count("output") == 1
    assert [b.key for b in rt.blobs.entries("jobs/j/")] == ["jobs/j/image-0.png"]


def test_a_run_that_could_not_record_is_handed_back(runtime_for: Any) -> None:
    rt, store, flaky = runtime_for(lambda s: Flaky(s, only={"finish"}), store_patience_s=0.2)
    _submit(store, "j", steps=2)
    flaky.down.set()
    with pytest.raises(StoreUnavailable):
        rt.run_job("j")
    job = store.get("j")
    assert job is not None and job.status == "running" and job.worker == rt.id
    flaky.down.clear()
    assert rt.reap() == 1  # its own job, which no thread runs any more
    job = store.get("j")
    assert job is not None and job.status == "queued"
    assert rt.run_job("j") == "succeeded"
    job = store.get("j")
    assert job is not None and job.attempts == 2
    assert _types(store, "j").count("output") == 1


def test_a_running_job_of_this_worker_is_not_reaped(runtime_for: Any) -> None:
    rt, store, _ = runtime_for()
    _submit(store, "j", steps=40)
    runner = threading.Thread(target=rt.run_job, args=("j",))
    runner.start()
    deadline = time.monotonic() + 120
    while _status(store, "j") != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert rt.reap() == 0
    runner.join(60)
    job = store.get("j")
    assert job is not None and job.status == "succeeded" and job.attempts == 1


def test_a_redelivered_finished_job_is_not_run_again(runtime_for: Any) -> None:
    rt, store, _ = runtime_for()
    _submit(store, "j", steps=2)
    assert rt.run_job("j") == "succeeded"
    events = _types(store, "j")
    assert rt.run_job("j") == "skipped (succeeded)"
    assert _types(store, "j") == events


def test_a_job_past_its_deadline_fails_timeout(runtime_for: Any) -> None:
    rt, store, _ = runtime_for(max_job_timeout_s=0.5)
    _submit(store, "asked", steps=500, timeout_s=0.3)  # 10 s of steps
    _submit(store, "bounded", steps=500, timeout_s=3000)  # over the bound: the bound applies
    for job_id in ("asked", "bounded"):
        assert rt.run_job(job_id) == "timeout"
        job = store.get(job_id)
        assert job is not None and job.status == "failed"
        assert job.error["code"] == "timeout"
        assert _step(store, job_id) < 500


def test_the_broker_takes_json_only_and_outwaits_the_longest_job() -> None:
    from workers.celery_app import broker_options, make_celery

    settings = Settings(redis_url="redis://127.0.0.1:1/0", max_job_timeout_s=3600)
    app = make_celery(settings)
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
    _, options = broker_options(settings)
    assert options["visibility_timeout"] > settings.max_job_timeout_s * settings.max_attempts


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    try:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
                                 "--maxmemory-policy", "allkeys-lru"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        pytest.skip("redis-server is not installed")
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


def test_redis_that_may_evict_is_refused_and_one_without_aof_warned(
        own_redis: str, caplog: pytest.LogCaptureFixture) -> None:
    import redis

    from workers.startup import RedisMisconfigured, check_redis

    with pytest.raises(RedisMisconfigured, match="CONFIG SET maxmemory-policy noeviction"):
        check_redis(own_redis)
    redis.Redis.from_url(own_redis).config_set("maxmemory-policy", "noeviction")
    with caplog.at_level(logging.WARNING, logger="workers.startup"):
        check_redis(own_redis)
    assert "AOF" in caplog.text


def test_jobs_of_one_message_are_claimed_batched_and_recorded_together(runtime_for: Any) -> None:
    rt, store, _ = runtime_for()
    for j in ("a", "b", "c"):
        _submit(store, j, steps=2)
    store.cancel("c")  # canceled while queued
    outcomes = rt.run_jobs(["a", "b", "c", "gone"])
    assert outcomes == ["succeeded", "succeeded", "skipped (canceled)", "missing"]
    assert rt.batcher.stats.batches == 1 and rt.batcher.stats.items == 2  # a and b together
    for j in ("a", "b"):
        job = store.get(j)
        assert job is not None and job.status == "succeeded" and job.worker == "w1"
        assert _types(store, j)[-2:] == ["output", "status"]
        assert [b.key for b in rt.blobs.entries(f"jobs/{j}/")] == [f"jobs/{j}/image-0.png"]
    assert rt.jobs_done == 2


def test_a_job_that_fails_to_start_leaves_the_others_of_its_message(runtime_for: Any) -> None:
    rt, store, _ = runtime_for()
    _submit(store, "good", steps=2)
    put(store, job("bad", owner="local", kind="generate", model="no-such-model", input={}))
    assert rt.run_jobs(["bad", "good"]) == ["invalid_input", "succeeded"]
    bad = store.get("bad")
    assert bad is not None and bad.status == "failed"
    assert bad.error["code"] == "invalid_input"


def test_jobs_of_one_message_in_different_batches_end_as_their_batch_ends(runtime_for: Any
                                                                          ) -> None:
    rt, store, _ = runtime_for()
    ids = [f"j{i}" for i in range(6)]  # sleepy's max_batch is 4: a batch of 4, then one of 2
    for j in ids[:4]:
        _submit(store, j, steps=2)
    for j in ids[4:]:
        _submit(store, j, steps=40)
    runner = threading.Thread(target=rt.run_jobs, args=(ids,))
    runner.start()
    deadline = time.monotonic() + 60
    while _status(store, "j0") != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert [store.get(j).status for j in ids[4:]] == ["running", "running"]  # type: ignore[union-attr]
    runner.join(60)
    assert all(store.get(j).status == "succeeded" for j in ids)  # type: ignore[union-attr]


@pytest.mark.parametrize("bug", [ValueError("negative dimension"), KeyError("steps")])
def test_a_bug_inside_a_predictor_fails_the_job_internal(runtime_for: Any, bug: Exception,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Only the model's explicit InvalidRequest blames the caller; a bare ValueError or
    KeyError from a model is the service's fault."""
    from tests.support.plugins import SleepyPredictor

    def broken(*_: Any, **__: Any) -> Any:
        raise bug

    monkeypatch.setattr(SleepyPredictor, "predict", broken)
    rt, store, _ = runtime_for()
    _submit(store, "j", steps=2)
    assert rt.run_job("j") == "internal"
    failed = store.get("j")
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and failed.error["code"] == "internal"
    assert type(bug).__name__ in failed.error["message"]


def test_the_models_invalid_request_fails_the_job_invalid_input(
        runtime_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from models.predictor import InvalidRequest
    from tests.support.plugins import SleepyPredictor

    def refuses(*_: Any, **__: Any) -> Any:
        raise InvalidRequest("the prompt is over the model's 77 tokens")

    monkeypatch.setattr(SleepyPredictor, "predict", refuses)
    rt, store, _ = runtime_for()
    _submit(store, "j", steps=2)
    assert rt.run_job("j") == "invalid_input"
    failed = store.get("j")
    assert failed is not None and failed.error == {
        "code": "invalid_input", "message": "the prompt is over the model's 77 tokens"}
