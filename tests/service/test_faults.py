"""Faults against real processes: a worker killed mid-job and restarted, a poison job, a warm
shutdown, a Redis restart. No accepted job may be lost or take effect twice.

Each test prints one ``FIGURES`` line (jobs submitted, completed, duplicated effects); run
with ``-s`` to see them. Redis databases: 13 (``fresh_service``); the Redis-restart test runs
a redis-server of its own on a free port.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from core.blobs import BlobStore, job_prefix, open_blobs
from core.settings import Settings
from core.store import JobStore, open_store
from tests.fixtures import Service, free_port, wait_status
from tests.helpers import parse_sse

pytestmark = pytest.mark.slow
DONE = ("succeeded", "failed", "canceled")


def sleepy(steps: int, n: int = 1) -> dict[str, Any]:
    return {"kind": "generate", "model": "sleepy", "input": {"steps": steps, "n": n}}


def store_of(svc: Service) -> JobStore:
    """The service's own store, opened from the test (to count artifacts)."""
    return open_store(Settings(redis_url=svc.env.get("CONVOY_REDIS_URL"),
                               data_dir=Path(svc.env["CONVOY_DATA_DIR"])))


def blobs_of(svc: Service) -> BlobStore:
    """The service's own blob store (outputs and previews), opened from the test."""
    return open_blobs(Settings(data_dir=Path(svc.env["CONVOY_DATA_DIR"]),
                               blobs=svc.env.get("CONVOY_BLOBS")))


def artifact_names(blobs: BlobStore, job_id: str) -> list[str]:
    return sorted(b.key.rsplit("/", 1)[-1] for b in blobs.entries(job_prefix(job_id)))


def wait_progress(c: httpx.Client, job_id: str, step: int, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = c.get(f"/v1/jobs/{job_id}").json().get("progress") or {}
        if progress.get("step", 0) >= step:
            return int(progress["step"])
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} made no progress in {timeout} s")


def effects(c: httpx.Client, store: JobStore, job_id: str, blobs: BlobStore
            ) -> dict[str, Any]:
    """What a finished job left behind: its events by type and its stored artifacts."""
    events = parse_sse(c.get(f"/v1/jobs/{job_id}/events").text)
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    return {
        "outputs": sum(e["event"] == "output" for e in events),
        "finals": [s for s in statuses if s in DONE],
        "running": [e["data"].get("attempt") for e in events
                    if e["event"] == "status" and e["data"]["status"] == "running"],
        "artifacts": artifact_names(blobs, job_id),
    }


def duplicates(found: dict[str, Any], images: int) -> int:
    """Effects recorded more than once: output events, final statuses, artifacts."""
    return (max(0, found["outputs"] - 1) + max(0, len(found["finals"]) - 1)
            + max(0, len(found["artifacts"]) - images))


def figures(scenario: str, submitted: int, completed: int, dups: int) -> None:
    print(f"FIGURES {scenario}: submitted={submitted} completed={completed} duplicates={dups}")


@pytest.mark.parametrize("fresh_service", ["embedded", "redis"], indirect=True)
def test_sigkill_mid_job_then_restart(fresh_service: Service) -> None:
    svc = fresh_service
    svc.start_worker()
    store = store_of(svc)
    with svc.client() as c:
        job = c.post("/v1/jobs", json=sleepy(100, n=2)).json()
        step = wait_progress(c, job["id"], 3)
        svc.kill_workers(signal.SIGKILL)
        assert step < 100 and c.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
        svc.start_worker()
        done = wait_status(c, job["id"], DONE, timeout=240)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        found = effects(c, store, job["id"], blobs_of(svc))
        for image in done["output"]["images"]:
            assert c.get(image["url"]).content.startswith(b"\x89PNG")
    assert found["running"] == [1, 2]
    assert found["outputs"] == 1 and found["finals"] == ["succeeded"]
    assert found["artifacts"] == ["image-0.png", "image-1.png"]
    figures(f"sigkill-restart-{svc.mode}", 1, 1, duplicates(found, 2))  # type: ignore[attr-defined]


class Supervisor:
    """Keeps ``n`` workers running, restarting any that dies (as systemd or
    ``convoy worker --gpus`` would)."""

    def __init__(self, svc: Service, n: int, *extra: str) -> None:
        self.svc, self.n, self.extra = svc, n, extra
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        for _ in range(self.n):
            self.svc.start_worker(False, *self.extra)
        self.svc._wait(lambda: len(self.svc.worker_ids()) >= self.n, f"{self.n} workers")
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for proc in list(self.svc.workers):
                if proc.poll() is not None:
                    self.svc.workers.remove(proc)
                    self.svc.start_worker(False, *self.extra)
                    self.restarts += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.parametrize("fresh_service", ["redis"], indirect=True)
def test_poison_job_ends_worker_lost_while_others_flow(fresh_service: Service) -> None:
    svc = fresh_service
    svc.env["CONVOY_MAX_ATTEMPTS"] = "2"
    store = store_of(svc)
    # One job at a time per worker: a crash takes only the job that caused it.
    with Supervisor(svc, 2, "--concurrency", "1") as supervisor, svc.client() as c:
        poison = c.post("/v1/jobs", json={"kind": "generate", "model": "poison",
                                          "input": {"steps": 1}}).json()
        others: list[str] = []
        deadline = time.monotonic() + 300
        while c.get(f"/v1/jobs/{poison['id']}").json()["status"] not in DONE:
            assert time.monotonic() < deadline, "the poison job never ended"
            if len(others) < 30:
                others.append(c.post("/v1/jobs", json=sleepy(4)).json()["id"])
            time.sleep(0.5)
        lost = c.get(f"/v1/jobs/{poison['id']}").json()
        finished = [wait_status(c, j, DONE, timeout=240) for j in others]
        dups = sum(duplicates(effects(c, store, j, blobs_of(svc)), 1) for j in others)
        restarts = supervisor.restarts
    assert lost["status"] == "failed" and lost["error"]["code"] == "worker_lost", lost
    assert lost["attempts"] == 2 and restarts >= 2
    assert [j["status"] for j in finished] == ["succeeded"] * len(others)
    assert all(j["attempts"] == 1 for j in finished)
    # others kept flowing while the poison job was still being retried
    assert any(j["finished_at"] < lost["finished_at"] for j in finished)
    assert dups == 0
    figures("poison", len(others) + 1, len(others) + 1, dups)


@pytest.mark.parametrize("fresh_service", ["redis"], indirect=True)
def test_sigterm_is_a_warm_shutdown(fresh_service: Service) -> None:
    svc = fresh_service
    proc = svc.start_worker()
    (worker_id,) = svc.worker_ids()
    store = store_of(svc)
    with svc.client() as c:
        running = [c.post("/v1/jobs", json=sleepy(60)).json()["id"] for _ in range(3)]
        for job_id in running:
            wait_progress(c, job_id, 2)
        proc.send_signal(signal.SIGTERM)
        later = c.post("/v1/jobs", json=sleepy(4)).json()["id"]
        svc.start_worker(False)  # its replacement, as a supervisor would start it
        assert proc.wait(timeout=120) == 0
        assert worker_id not in {w["id"] for w in store.workers()}  # deregistered on its way out
        finished = [c.get(f"/v1/jobs/{j}").json() for j in running]
        assert [(j["status"], j["attempts"]) for j in finished] == [("succeeded", 1)] * 3
        done = wait_status(c, later, DONE, timeout=240)
        assert (done["status"], done["attempts"]) == ("succeeded", 1)
        dups = sum(duplicates(effects(c, store, j, blobs_of(svc)), 1) for j in [*running, later])
    assert dups == 0
    figures("sigterm", 4, 4, dups)


class RedisServer:
    """A redis-server of the test's own, with AOF on so that a restart keeps its data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--dir", str(self.folder)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_restart_loses_nothing(own_redis: RedisServer, tmp_path: Path) -> None:
    svc = Service(tmp_path, own_redis.url)
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            before = [c.post("/v1/jobs", json=sleepy(2)).json()["id"]]
            wait_status(c, before[0], DONE, timeout=120)
            before += [c.post("/v1/jobs", json=sleepy(100)).json()["id"] for _ in range(2)]
            wait_progress(c, before[1], 2)
            before.append(c.post("/v1/jobs", json=sleepy(4)).json()["id"])
            own_redis.stop()
            _assert_unavailable(c, before[1])
            own_redis.start()
            after = [_submit_when_back(c, sleepy(4)) for _ in range(3)]
            finished = [wait_status(c, j, DONE, timeout=240) for j in before + after]
            store = store_of(svc)
            dups = sum(duplicates(effects(c, store, j, blobs_of(svc)), 1) for j in before + after)
    finally:
        svc.stop()
    assert [j["status"] for j in finished] == ["succeeded"] * len(finished)
    assert all(j["attempts"] == 1 for j in finished)  # each ran once, through the outage
    assert dups == 0
    figures("redis-restart", len(finished), len(finished), dups)


def _assert_unavailable(c: httpx.Client, job_id: str) -> None:
    """Every route that needs the store answers 503 with Retry-After, and quickly."""
    calls = [("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job_id}"),
             ("GET", f"/v1/jobs/{job_id}/events"), ("GET", f"/v1/jobs/{job_id}/artifacts/x.png"),
             ("POST", f"/v1/jobs/{job_id}/cancel"), ("GET", "/v1/workers"), ("GET", "/readyz")]
    for method, path in calls:
        t0 = time.monotonic()
        r = c.request(method, path)
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert int(r.headers["retry-after"]) >= 1 and time.monotonic() - t0 < 5, path
    t0 = time.monotonic()
    r = c.post("/v1/jobs", json=sleepy(4))
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert int(r.headers["retry-after"]) >= 1 and time.monotonic() - t0 < 5
    listing = c.get("/v1/models")  # the catalog needs no Redis; fine-tuned models are missing
    assert listing.status_code == 200 and listing.json()["partial"] is True
    assert any(m["name"] == "sleepy" for m in listing.json()["models"])


def _submit_when_back(c: httpx.Client, body: dict[str, Any], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = c.post("/v1/jobs", json=body)
        if r.status_code == 202:
            return str(r.json()["id"])
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(float(r.headers.get("retry-after", "1")) / 4)


@pytest.mark.parametrize("fresh_service", ["embedded", "redis"], indirect=True)
def test_a_job_whose_message_was_lost_still_runs(fresh_service: Service) -> None:
    """The message is taken away before any worker claims the job (as by a worker that died
    between the two); a worker sends it again once the job has waited long enough."""
    svc = fresh_service
    with svc.client() as c:
        job = c.post("/v1/jobs", json=sleepy(2)).json()
        if svc.mode == "redis":  # type: ignore[attr-defined]
            import redis

            assert redis.Redis.from_url(svc.env["CONVOY_REDIS_URL"]).delete("convoy") == 1
        else:
            lost = list((Path(svc.env["CONVOY_DATA_DIR"]) / "broker").glob("*.convoy.msg"))
            assert len(lost) == 1
            lost[0].unlink()
        svc.env["CONVOY_STRANDED_AFTER_S"] = "1.5"
        svc.start_worker()
        done = wait_status(c, job["id"], DONE, timeout=60)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1
    assert "stranded jobs of queue convoy again" in svc.tail()
