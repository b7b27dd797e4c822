"""A job's place and cost through real processes, in both modes: queue positions that count
down (on records, listings and ``queue`` events) with ETAs, a high priority that jumps 30
queued jobs, a key's priority bound, device-seconds on records and ``GET /v1/usage``, and a
spent quota answered 429 with Retry-After.

One worker taking one job at a time (no batching) makes the order observable. The ETA test
prints a ``FIGURES`` line (median and largest error of the estimated start against the
actual one, relative to the wait); run with ``-s`` to see it.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from service.client import Client
from tests.fixtures import Service, wait_status
from tests.helpers import parse_sse

pytestmark = pytest.mark.slow
KEYS = {"alice": "key-alice", "bob": "key-bob"}
ENV = {"CONVOY_WORKER_CONCURRENCY": "1", "CONVOY_BATCHING": "false", "CONVOY_MAX_PRIORITY": "0",
       "CONVOY_KEY_LIMITS": json.dumps({"alice": {"max_priority": 5},
                                        "bob": {"quota_device_s": 0.2}}),
       "CONVOY_API_KEYS": ",".join(f"{o}:{k}" for o, k in KEYS.items()),
       "CONVOY_QUEUE_EVENTS_S": "0.3"}


@pytest.fixture(scope="module", params=["embedded", "redis"])
def single(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Service]:
    from tests.conftest import redis_db_url

    url = redis_db_url(15) if request.param == "redis" else None
    svc = Service(tmp_path_factory.mktemp(f"single-{request.param}"), url, **ENV)
    svc.mode = request.param  # type: ignore[attr-defined]
    try:
        svc.start_api()
        svc.start_worker(False)
        svc._wait(lambda: httpx.get(f"{svc.url}/readyz", timeout=2).status_code == 200, "worker")
        yield svc
    finally:
        svc.stop()


def sleepy(steps: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "generate", "model": "sleepy", "input": {"steps": steps}, **extra}


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def busy(c: httpx.Client, steps: int) -> str:
    job_id = c.post("/v1/jobs", json=sleepy(steps)).json()["id"]
    wait_status(c, job_id, ("running",))
    return str(job_id)


def test_positions_count_down_with_etas(single: Service) -> None:
    with single.client(KEYS["alice"]) as c:
        for _ in range(3):  # run times for the estimates
            wait_status(c, c.post("/v1/jobs", json=sleepy(6)).json()["id"], ("succeeded",))
        slow = busy(c, 40)
        ids = [c.post("/v1/jobs", json=sleepy(6)).json()["id"] for _ in range(20)]
        read_at = time.time()
        listed = {j["id"]: j for j in c.get("/v1/jobs", params={"status": "queued"}).json()["jobs"]}
        assert [listed[j]["queue"]["position"] for j in ids] == list(range(1, 21))
        record = c.get(f"/v1/jobs/{ids[4]}").json()
        assert record["queue"]["ahead"] == 4 and record["queue"]["workers"] == 1
        etas = {j: listed[j]["queue"]["eta_start_at"] for j in ids}
        assert all(etas.values()), etas
        done = [wait_status(c, j, ("succeeded",), timeout=120) for j in ids]
        wait_status(c, slow, ("succeeded",))
        for j in ids:
            events = parse_sse(c.get(f"/v1/jobs/{j}/events").text)
            positions = [e["data"]["position"] for e in events if e["event"] == "queue"]
            assert positions, j
            assert positions == sorted(positions, reverse=True), (j, positions)
    errors = [abs(epoch(etas[d["id"]]) - epoch(d["started_at"])) /
              max(0.5, epoch(d["started_at"]) - read_at) for d in done]
    late = statistics.median(epoch(d["started_at"]) - epoch(etas[d["id"]]) for d in done)
    print(f"FIGURES eta[{getattr(single, 'mode', '?')}]: jobs=20 median_error="
          f"{statistics.median(errors):.2f} max_error={max(errors):.2f} "
          f"median_start_later_than_eta_s={late:.2f}")
    assert statistics.median(errors) < 0.5


def test_a_high_priority_job_starts_before_30_queued_ones(single: Service) -> None:
    with single.client(KEYS["alice"]) as c:
        slow = busy(c, 30)
        lows = [c.post("/v1/jobs", json=sleepy(2)).json()["id"] for _ in range(30)]
        high = c.post("/v1/jobs", json=sleepy(2, priority=5))
        assert high.status_code == 202, high.text
        assert c.get(f"/v1/jobs/{high.json()['id']}").json()["queue"]["position"] == 1
        over = c.post("/v1/jobs", json=sleepy(2, priority=6))
        assert over.status_code == 422 and "priority" in over.json()["error"]["message"]
        wait_status(c, slow, ("succeeded",))
        started = {j: wait_status(c, j, ("succeeded",), timeout=120)["started_at"]
                   for j in [high.json()["id"], *lows]}
    order = sorted(started, key=lambda j: started[j])
    assert order[0] == high.json()["id"]
    assert order[1:] == lows  # first come first served among equals


def test_device_seconds_and_a_spent_quota(single: Service) -> None:
    with single.client(KEYS["bob"]) as c:
        assert c.post("/v1/jobs", json=sleepy(2, priority=1)).status_code == 422  # bound 0
        first = c.post("/v1/jobs", json=sleepy(8)).json()["id"]  # about 0.4 s
        record = wait_status(c, first, ("succeeded",))
        deadline = time.monotonic() + 10
        while record.get("device_s") is None and time.monotonic() < deadline:
            record = c.get(f"/v1/jobs/{first}").json()
        assert 0.3 < record["device_s"] < 5.0
        usage = c.get("/v1/usage").json()
        assert usage["device_s"] == pytest.approx(record["device_s"], rel=1e-6)
        assert usage["by_model"] == {"sleepy": pytest.approx(record["device_s"], rel=1e-6)}
        assert usage["quota_device_s"] == 0.2 and usage["remaining_device_s"] == 0
        with Client(single.url, KEYS["bob"]) as sdk:
            assert sdk.usage().device_s == usage["device_s"]
        refused = c.post("/v1/jobs", json=sleepy(2))
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    with single.client(KEYS["alice"]) as c:  # another key is not limited by bob's quota
        assert c.post("/v1/jobs", json=sleepy(1)).status_code == 202


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name) and line[len(name)] in "{ "
                and all(f'{k}="{v}"' in line for k, v in labels.items())):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_add_up_and_outlive_the_worker(single: Service) -> None:
    """Runs last in its module: it stops the worker."""
    with single.client(KEYS["alice"]) as c:
        parked = [c.post("/v1/jobs", json={"kind": "generate", "model": "parked",
                                           "input": {"steps": 2}}).json()["id"] for _ in range(3)]
        time.sleep(6.0)  # the worker saves its counters every few heartbeats
        text = c.get("/metrics").text
        assert metric(text, "convoy_queue_depth", queue="parked", model="parked") == 3
        assert metric(text, "convoy_queue_oldest_age_seconds", queue="parked") > 0
        assert metric(text, "convoy_device_seconds_total", owner="bob", model="sleepy") > 0.3
        done = metric(text, "convoy_worker_jobs_total", status="succeeded")
        assert done >= 50
        assert metric(text, "convoy_job_run_seconds_count", kind="generate", model="sleepy") >= 50
        single.kill_workers(signal.SIGTERM)
        time.sleep(1.0)
        after = c.get("/metrics").text
        assert metric(after, "convoy_worker_jobs_total", status="succeeded") >= done
        for job_id in parked:
            c.post(f"/v1/jobs/{job_id}/cancel")
