"""GET /metrics: what the workers report through their heartbeats, in both modes."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import Service
from tests.helpers import digit_images

pytestmark = pytest.mark.slow


def samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_jobs_by_status_and_time_them(service: Service) -> None:
    succeeded = {"kind": "classify", "model": "lenet5-digits", "status": "succeeded"}
    canceled = {"kind": "generate", "model": "sleepy", "status": "canceled"}
    images, _ = digit_images(3)
    with service.client() as c:
        before = samples(c)
        for image in images:
            r = c.post("/v1/jobs", json={"kind": "classify", "model": "lenet5-digits",
                                         "input": {"image": image}}, headers={"Prefer": "wait=30"})
            assert r.status_code == 200, r.text
        slow = c.post("/v1/jobs", json={"kind": "generate", "model": "sleepy",
                                        "input": {"steps": 200}}).json()
        while c.get(f"/v1/jobs/{slow['id']}").json()["status"] == "queued":
            time.sleep(0.02)
        c.post(f"/v1/jobs/{slow['id']}/cancel")

        deadline = time.monotonic() + 20  # workers report with their next heartbeat
        while True:
            after = samples(c)
            if (value(after, "convoy_jobs_total", **succeeded)
                    >= value(before, "convoy_jobs_total", **succeeded) + 3
                    and value(after, "convoy_jobs_total", **canceled)
                    >= value(before, "convoy_jobs_total", **canceled) + 1):
                break
            assert time.monotonic() < deadline, "the jobs never showed in /metrics"
            time.sleep(0.2)

    assert value(after, "convoy_workers") >= 1
    for name in ("convoy_queue_wait_seconds", "convoy_run_seconds"):
        ran = value(after, f"{name}_count") - value(before, f"{name}_count")
        assert ran >= 4, name  # three classify jobs and the canceled one ran here
        assert value(after, f"{name}_bucket", le="+Inf") == value(after, f"{name}_count")
        assert value(after, f"{name}_sum") > value(before, f"{name}_sum")
    batches = value(after, "convoy_batch_size_count") - value(before, "convoy_batch_size_count")
    images_in = value(after, "convoy_batch_size_sum") - value(before, "convoy_batch_size_sum")
    assert batches >= 2 and images_in >= 4  # requests per batch, summed
    assert value(after, "convoy_batch_size_bucket", le="1.0") >= 1
