"""Jobs whose message was lost (taken by a worker that died before claiming them) are sent
again once they have waited ``stranded_after_s`` with nothing waiting in their queue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from models.catalog import Catalog
from tests.support.jobs import job, put
from workers.cache import ModelCache
from workers.celery_app import make_celery, task_message, waiting_messages
from workers.runtime import WorkerRuntime
from workers.settings import Settings
from workers.store import Job, JobStore, Outcome, open_store


def _job(job_id: str, age_s: float, queue: str) -> Job:
    created = (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat().replace("+00:00", "Z")
    return job(job_id, owner="local", queue=queue, input={}, created_at=created)


@pytest.fixture
def q() -> str:
    """A queue of the test's own: kombu's in-memory transports share what one app declared
    with the next app of the process, so a queue name is never reused across tests."""
    return f"q-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["embedded", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return Settings(redis_url=redis_url, data_dir=tmp_path, stranded_after_s=60)


def _runtime(settings: Settings, queue: str) -> tuple[WorkerRuntime, JobStore, Any]:
    """A runtime whose catalog has a model on ``queue`` (the queues it looks after)."""
    catalog = settings.data_dir / f"{queue}.toml"
    catalog.write_text(f'[models.m]\nfamily = "lenet5"\nkinds = ["classify"]\nqueue = "{queue}"\n')
    store = open_store(settings)
    app = make_celery(settings)
    return (WorkerRuntime(settings, store, Catalog.load([catalog]),
                          ModelCache(torch.device("cpu")), celery=app, name="w1"), store, app)


def test_a_stale_job_with_no_message_is_sent_again_once(settings: Settings, q: str) -> None:
    rt, store, app = _runtime(settings, q)
    put(store, _job("stale", 120, q), _job("young", 1, q))
    assert store.stale_queued(60) == [("stale", q)]
    assert rt.rescue_stranded() == 1
    assert waiting_messages(app, q) == 1
    with app.connection_for_read() as conn:
        message = conn.SimpleQueue(q).get(timeout=5)
        assert message.payload[0] == [["stale"]]  # Celery's (args, kwargs, embed)
        message.ack()
    assert rt.rescue_stranded() == 0  # sent already: not again before another 60 s


def test_a_stale_job_whose_queue_holds_messages_waits_for_it_to_drain(settings: Settings,
                                                                      q: str) -> None:
    rt, store, app = _runtime(settings, q)
    put(store, _job("stale", 120, q))
    with app.connection_for_write() as conn:
        conn.SimpleQueue(q).put("some other job's message")
    assert rt.rescue_stranded() == 0
    with app.connection_for_read() as conn:
        conn.SimpleQueue(q).get(timeout=5).ack()  # the queue drains
    assert rt.rescue_stranded() == 1


def test_a_running_or_finished_job_is_never_sent_again(settings: Settings, q: str) -> None:
    rt, store, _ = _runtime(settings, q)
    put(store, _job("running", 120, q), _job("done", 120, q))
    store.claim(["running"], "w9")
    store.finish([Outcome("done", "canceled")])
    assert store.stale_queued(60) == []
    assert rt.rescue_stranded() == 0


def test_the_message_built_for_redis_counts_as_waiting(redis_url: str, tmp_path: Path) -> None:
    import redis

    settings = Settings(redis_url=redis_url, data_dir=tmp_path)
    app = make_celery(settings)
    key, body = task_message(["a"], "q-built")
    redis.Redis.from_url(redis_url).lpush(key, body)
    assert waiting_messages(app, "q-built") == 1
    assert waiting_messages(app, "never-used") == 0


def test_a_queue_outside_the_workers_catalog_is_left_to_its_own_workers(settings: Settings,
                                                                         q: str) -> None:
    rt, store, _ = _runtime(settings, q)
    put(store, _job("elsewhere", 120, f"{q}-other"))
    assert store.stale_queued(60) == [("elsewhere", f"{q}-other")]
    assert rt.rescue_stranded() == 0
