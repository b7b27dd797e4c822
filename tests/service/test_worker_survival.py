"""A worker outlives what it cannot read, and ``convoy serve`` outlives its worker: malformed
broker messages are set aside while the worker keeps serving; a worker child that dies is
started again; with no live worker, jobs still queue and the service says why.

Real processes; Redis database 13 (``fresh_service``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from core.celery_app import task_message
from core.dead_letters import DEAD_FOLDER, DEAD_LIST
from tests.fixtures import ROOT, Service, free_port, wait_status

pytestmark = pytest.mark.slow
DONE = ("succeeded", "failed", "canceled")


def malformed() -> list[bytes]:
    """Not JSON; an empty object; an envelope whose body is not base64."""
    _, good = task_message("some-job", "convoy")
    envelope = json.loads(good)
    envelope["body"] = "%%% not base64 %%%"
    return [b"not json", b"{}", json.dumps(envelope).encode()]


def push(svc: Service, entries: list[bytes]) -> None:
    if svc.mode == "redis":  # type: ignore[attr-defined]
        import redis

        client = redis.Redis.from_url(svc.env["CONVOY_REDIS_URL"])
        for entry in entries:
            client.lpush("convoy", entry)
        return
    folder = Path(svc.env["CONVOY_DATA_DIR"]) / "broker"
    for entry in entries:
        (folder / f"{time.time_ns():020d}_{uuid.uuid4()}.convoy.msg").write_bytes(entry)


def set_aside(svc: Service) -> int:
    if svc.mode == "redis":  # type: ignore[attr-defined]
        import redis

        return int(redis.Redis.from_url(svc.env["CONVOY_REDIS_URL"]).llen(DEAD_LIST))
    return len(list((Path(svc.env["CONVOY_DATA_DIR"]) / "broker" / DEAD_FOLDER).glob("*.msg")))


@pytest.mark.parametrize("fresh_service", ["embedded", "redis"], indirect=True)
def test_malformed_messages_are_set_aside_and_the_worker_keeps_serving(
        fresh_service: Service) -> None:
    svc = fresh_service
    worker = svc.start_worker()
    push(svc, malformed())
    body = {"kind": "generate", "model": "sleepy", "input": {"steps": 2}}
    with svc.client() as c:
        deadline = time.monotonic() + 60
        while set_aside(svc) < 3 and worker.poll() is None:
            assert time.monotonic() < deadline, svc.tail()
            time.sleep(0.1)
        job = c.post("/v1/jobs", json=body).json()
        done = wait_status(c, job["id"], DONE, timeout=120)
    assert worker.poll() is None, svc.tail()
    assert done["status"] == "succeeded"
    assert set_aside(svc) == 3
    assert svc.tail().count("malformed message") == 3
    assert "Unrecoverable" not in svc.tail()


def _worker_pids(c: httpx.Client) -> set[int]:
    try:
        r = c.get("/v1/workers")
    except httpx.HTTPError:  # the API is not up yet
        return set()
    return {int(w["pid"]) for w in r.json()["workers"]} if r.status_code == 200 else set()


def test_serve_restarts_its_worker_and_says_why_while_none_lives(tmp_path: Path) -> None:
    svc = Service(tmp_path)  # for its environment: the test catalog, fast heartbeats
    port = free_port()
    env = {**svc.env, "CONVOY_WORKER_RESTART_MAX_S": "6"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port",
                                  str(port)], cwd=ROOT, env=env, stdout=out,
                                 stderr=subprocess.STDOUT)
    body = {"kind": "generate", "model": "sleepy", "input": {"steps": 2}}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            deadline = time.monotonic() + 120
            while not _worker_pids(c):
                assert time.monotonic() < deadline and serve.poll() is None, log.read_text()
                time.sleep(0.2)
            (first,) = _worker_pids(c)
            os.kill(first, signal.SIGKILL)
            # no live worker for a while: jobs still queue; /readyz and the record say why
            deadline = time.monotonic() + 30
            while c.get("/readyz").status_code == 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            ready = c.get("/readyz")
            queued = c.post("/v1/jobs", json=body)
            assert queued.status_code == 202
            record = c.get(f"/v1/jobs/{queued.json()['id']}").json()
            assert ready.status_code == 503 and "no live worker" in ready.json()["checks"]["why"]
            if record["status"] == "queued":
                assert "no live worker" in record["waiting"]
            # ... until serve has started another, which runs the job
            done = wait_status(c, queued.json()["id"], DONE, timeout=180)
            assert done["status"] == "succeeded"
            assert _worker_pids(c) - {first}
            assert c.get("/readyz").status_code == 200
            assert c.get(f"/v1/jobs/{done['id']}").json().get("waiting") is None
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
    assert "restarting" in log.read_text()
