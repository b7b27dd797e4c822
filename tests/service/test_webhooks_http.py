"""Webhooks through real processes (the API under uvicorn, ``convoy worker``), in both modes:
each event type reaches a receiver on 127.0.0.1 signed with the owner's secret from the
API; a refused URL is a 422; the API and the worker SIGKILLed while a delivery is in flight,
then restarted, still deliver it.

Each test prints one ``FIGURES`` line (deliveries attempted, delivered ids, duplicates);
run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from service.client import Client
from tests.fixtures import Service, wait_status
from tests.helpers import parse_sse
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow
HOOK_ENV = {"CONVOY_WEBHOOK_ALLOW": "127.0.0.1", "CONVOY_WEBHOOK_POLL_S": "0.2",
            "CONVOY_WEBHOOK_BACKOFF_S": "0.5", "CONVOY_WEBHOOK_BACKOFF_MAX_S": "2",
            "CONVOY_WEBHOOK_CONNECT_TIMEOUT_S": "1", "CONVOY_WEBHOOK_READ_TIMEOUT_S": "6"}


@pytest.fixture(params=["embedded", "redis"])
def hooked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    from tests.conftest import redis_db_url

    url = redis_db_url(14) if request.param == "redis" else None
    svc = Service(tmp_path, url, **HOOK_ENV)
    svc.mode = request.param  # type: ignore[attr-defined]
    try:
        svc.start_api()
        svc.start_worker()
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def webhook_notes(c: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """The job's ``webhook`` events: the stream ends at the final status, and the attempts
    that come after it are read by resuming from there."""
    events = parse_sse(c.get(f"/v1/jobs/{job_id}/events").text)
    last = events[-1]["id"] if events else 0
    events += parse_sse(c.get(f"/v1/jobs/{job_id}/events",
                              headers={"Last-Event-ID": str(last)}).text)
    return [e["data"] for e in events if e["event"] == "webhook"]


def test_each_event_type_is_delivered_and_verifies(hooked: Service, receiver: Receiver) -> None:
    with hooked.client() as c:
        refused = c.post("/v1/jobs", json={"kind": "generate", "model": "sleepy",
                                           "input": {"steps": 2},
                                           "webhook": "http://169.254.169.254/latest"})
        assert refused.status_code == 422 and "metadata" in refused.json()["error"]["message"]
        secret = c.get("/v1/webhook-secret").json()["secret"]
        with Client(hooked.url) as sdk:
            assert sdk.webhook_secret() == secret
        r = c.post("/v1/jobs", json={
            "kind": "generate", "model": "sleepy", "input": {"steps": 4}, "webhook": receiver.url,
            "webhook_events": ["start", "progress", "output", "completed"]})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_status(c, job_id, ("succeeded",))
        receiver.wait_for(lambda: any(json.loads(x.body)["type"] == "job.completed"
                                      for x in receiver.answered))
        verifier = Webhook(secret)
        bodies = [verifier.verify(x.body, x.headers) for x in receiver.requests]
        assert {b["type"] for b in bodies} == {"job.start", "job.progress", "job.output",
                                               "job.completed"}
        done = next(b for b in bodies if b["type"] == "job.completed")
        assert done["data"]["id"] == job_id and done["data"]["status"] == "succeeded"
        assert done["data"]["output"]["images"]
        time.sleep(1.0)
        notes = webhook_notes(c, job_id)  # attempts are on the job's events
        assert {n["event"] for n in notes if n["state"] == "delivered"} == {
            "start", "progress", "output", "completed"}
    assert all(n == 1 for n in receiver.ids().values())
    receiver.figures(f"events[{getattr(hooked, 'mode', '?')}]")


def test_delivery_survives_sigkill_of_api_and_worker(hooked: Service,
                                                     receiver: Receiver) -> None:
    """The receiver holds the first attempt while both processes are killed; after a
    restart the delivery is made again under the same webhook-id (at-least-once)."""
    receiver.delay_s = 3.0
    with hooked.client() as c:
        r = c.post("/v1/jobs", json={"kind": "generate", "model": "sleepy", "input": {"steps": 2},
                                     "webhook": receiver.url})
        job_id = r.json()["id"]
        receiver.wait_for(lambda: len(receiver.requests) >= 1)
    hooked.kill_workers(signal.SIGKILL)
    assert hooked.api is not None
    hooked.api.send_signal(signal.SIGKILL)
    hooked.api.wait(timeout=30)
    receiver.delay_s = 0.0
    time.sleep(3.5)  # the held attempt is answered; nobody is left to record it
    hooked.start_api()
    hooked.start_worker()
    receiver.wait_for(lambda: len(receiver.requests) >= 2, timeout=90)
    with hooked.client() as c:
        deadline = time.monotonic() + 60
        states: list[str] = []
        while time.monotonic() < deadline and "delivered" not in states:
            states = [n["state"] for n in webhook_notes(c, job_id)]
            time.sleep(0.3)
        assert "delivered" in states
    assert len(receiver.ids()) == 1  # one delivery, whatever the number of attempts
    receiver.figures(f"sigkill[{getattr(hooked, 'mode', '?')}]")
