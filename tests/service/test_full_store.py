"""A full store, against real processes: Redis at ``maxmemory`` under ``noeviction`` gets
503 ``unavailable`` answers while the worker waits and then finishes what it had; one key
cannot fill the store, its stored bytes are bounded (413 for one input over the bound, 429
once its inputs and results reach it).

The Redis of the full-memory test is a redis-server of the test's own on a free port; the
bound test uses Redis database 14.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import Service, wait_status
from tests.service.test_faults import DONE, RedisServer, sleepy, wait_progress

pytestmark = pytest.mark.slow


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_full_redis_answers_503_and_the_worker_waits_it_out(small_redis: RedisServer,
                                                              tmp_path: Path) -> None:
    import redis

    admin = redis.Redis.from_url(small_redis.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "64mb")
    svc = Service(tmp_path, small_redis.url)
    try:
        svc.start_api()
        worker = svc.start_worker()
        with svc.client() as c:
            running = c.post("/v1/jobs", json=sleepy(120)).json()["id"]
            wait_progress(c, running, 2)
            admin.config_set("maxmemory", "1mb")  # far below what it holds: no write fits
            answers = []
            deadline = time.monotonic() + 8  # past the dead-worker time and many heartbeats
            while time.monotonic() < deadline:
                r = c.post("/v1/jobs", json=sleepy(2))
                answers.append((r.status_code, r.json().get("error", {}).get("code"),
                                r.headers.get("retry-after")))
                time.sleep(0.5)
            alive_while_full = worker.poll() is None
            admin.config_set("maxmemory", "64mb")  # space again
            done = wait_status(c, running, DONE, timeout=240)
            after = c.post("/v1/jobs", json=sleepy(2))
            later = wait_status(c, after.json()["id"], DONE, timeout=120)
        alive_after = worker.poll() is None
    finally:
        svc.stop()
    assert answers and {a[:2] for a in answers} == {(503, "unavailable")}, answers
    assert all(int(a[2]) >= 1 for a in answers)
    assert alive_while_full and alive_after, svc.tail()
    assert done["status"] == "succeeded" and done["attempts"] == 1, done  # accepted, not lost
    assert after.status_code == 202 and later["status"] == "succeeded"


@pytest.mark.parametrize("mode", ["embedded", "redis"])
def test_one_key_cannot_store_more_than_its_bound(mode: str, tmp_path: Path) -> None:
    from tests.conftest import redis_db_url

    svc = Service(tmp_path, redis_db_url(14) if mode == "redis" else None,
                  CONVOY_MAX_STORED_BYTES_PER_OWNER="1500")
    big = {"kind": "generate", "model": "sleepy",
           "input": {"steps": 2, "prompt": "p" * 1000, "negative_prompt": "n" * 1000}}
    try:
        svc.start_api()
        with svc.client() as c:
            too_large = c.post("/v1/jobs", json=big)
            answers = []
            for _ in range(20):
                r = c.post("/v1/jobs", json=sleepy(2))
                answers.append(r)
                if r.status_code != 202:
                    break
            stored = c.get("/v1/jobs?limit=200").json()["jobs"]
    finally:
        svc.stop()
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["error"]["code"] == "payload_too_large"
    accepted = [r for r in answers if r.status_code == 202]
    refused = answers[-1]
    assert 1 <= len(accepted) < 20
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert len(stored) == len(accepted)  # nothing refused was kept
