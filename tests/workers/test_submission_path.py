"""The submission path of many jobs at once: accepted in one store step (with their broker
message, in Redis), claimed and recorded in one step each, finishes announced to waiting
API processes. Both stores; Redis: database 11, as in test_store."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobs import job, put
from workers.celery_app import TASK, make_celery, task_message
from workers.settings import Settings
from workers.store import Job, JobStore, Outcome
from workers.store.base import QueueFull
from workers.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


def test_accept_records_each_job_and_refuses_those_over_a_limit(store: JobStore) -> None:
    put(store, job("old", owner="bob"))
    jobs = [job("a"), job("b"), job("c"), job("old", owner="bob"), job("d", owner="bob")]
    results = store.accept(jobs, max_mine=2, max_all=3)
    a, b, c, old, d = results
    assert isinstance(a, tuple) and a[1] and a[0].status == "queued"
    assert isinstance(b, tuple) and b[1]
    assert isinstance(c, QueueFull) and c.whose == "owner"  # alice has 2 queued
    assert isinstance(old, tuple) and not old[1] and old[0].owner == "bob"  # id taken
    assert isinstance(d, QueueFull) and d.whose == "all"  # 3 queued of 3
    assert store.get("c") is None and store.get("d") is None
    assert (store.count_queued("alice"), store.count_queued()) == (2, 3)
    assert [e.data for e in store.events("a")] == [{"status": "queued"}]


def test_claims_and_finishes_of_many_jobs_say_what_became_of_each(store: JobStore) -> None:
    put(store, job("a"), job("b"), job("c"))
    store.cancel("c")
    claims = store.claim(["a", "b", "c", "nope"], "w1")
    assert [c.status if isinstance(c, Job) else c for c in claims] == [
        "running", "running", "canceled", "missing"]
    assert isinstance(claims[0], Job) and claims[0].attempts == 1
    assert store.claim(["a"], "w2") == ["running"]
    tokens = {c.id: c.token for c in claims if isinstance(c, Job)}
    store.cancel("b")
    assert store.stopped_among(tokens) == {"b": "canceled"}
    done = store.finish([Outcome("a", "succeeded", output={"x": 1}, worker="w1"),
                         Outcome("b", "canceled", worker="w1"),
                         Outcome("c", "succeeded", output={"x": 2}, worker="w1")])  # c: over
    assert done == [True, True, False]
    assert store.get("a").output == {"x": 1}  # type: ignore[union-attr]
    assert store.get("b").status == "canceled"  # type: ignore[union-attr]
    assert store.get("c").status == "canceled"  # type: ignore[union-attr]
    assert [e.type for e in store.events("a")] == ["status", "status", "output", "status"]


def test_the_message_is_what_celery_itself_sends(redis_url: str) -> None:
    """Same fields as ``send_task`` writes through kombu's Redis transport, and a worker
    decodes the job ids from it."""
    import redis

    app = make_celery(Settings(redis_url=redis_url))
    app.send_task(TASK, args=[["x", "y"]], queue="q-celery", task_id="x+1.abcd")
    client = redis.Redis.from_url(redis_url)
    sent = json.loads(client.lpop("q-celery"))  # type: ignore[arg-type]
    key, built = task_message(["x", "y"], "q-ours")
    ours = json.loads(built)
    assert key == "q-ours"
    assert set(ours) == set(sent)
    assert set(ours["headers"]) == set(sent["headers"])
    assert set(ours["properties"]) == set(sent["properties"])
    assert ours["headers"]["task"] == sent["headers"]["task"] == TASK
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q-ours"}
    assert json.loads(base64.b64decode(ours["body"]))[0] == [["x", "y"]]
    assert json.loads(base64.b64decode(sent["body"]))[0] == [["x", "y"]]


def test_redis_accepts_jobs_with_their_message_in_one_step(redis_url: str) -> None:
    import redis as redis_lib

    from workers.store.redis import RedisStore

    store = RedisStore(redis_url)
    message = task_message(["a", "b"], "q")
    results = store.accept([job("a"), job("b")], 10, 10, [message])
    assert all(isinstance(r, tuple) and r[1] for r in results)
    assert redis_lib.Redis.from_url(redis_url).lrange("q", 0, -1) == [message[1].encode()]


def test_redis_announces_each_finish_with_the_changed_fields(redis_url: str) -> None:
    from workers.store.redis import RedisStore

    store = RedisStore(redis_url)
    heard: list[tuple[str, dict[str, Any]]] = []
    stop = threading.Event()
    listener = threading.Thread(target=store.listen_finished,
                                args=(heard.extend, stop), daemon=True)
    listener.start()
    try:
        put(store, job("a"))
        deadline, probes = time.monotonic() + 10, 0
        while not heard and time.monotonic() < deadline:  # until the subscription is live
            probes += 1
            put(store, job(f"probe{probes}"))
            store.finish([Outcome(f"probe{probes}", "canceled")])
            time.sleep(0.05)
        heard.clear()
        store.r.publish("convoy:finished", "not json")  # skipped, and the listener goes on
        store.claim(["a"], "w1")
        store.finish([Outcome("a", "succeeded", output={"label": "cat"}, worker="w1")])
        deadline = time.monotonic() + 5
        while not heard and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        listener.join(5)
    assert heard, "no finish was announced"
    job_id, fields = heard[0]
    assert job_id == "a" and fields["status"] == "succeeded"
    assert fields["output"] == {"label": "cat"} and fields["attempts"] == 1
    assert fields["worker"] == "w1" and fields["finished_at"]


def test_a_batch_step_is_reported_for_all_its_jobs_at_once(store: JobStore) -> None:
    put(store, job("a"), job("b"))
    claims = {c.id: c.token for c in store.claim(["a", "b"], "w1") if isinstance(c, Job)}
    store.progress(claims, 3, 20)
    for j in ("a", "b"):
        assert store.get(j).progress == {"step": 3, "total": 20}  # type: ignore[union-attr]
        assert store.events(j)[-1].data == {"step": 3, "total": 20}
        assert store.events(j)[-1].type == "progress"
