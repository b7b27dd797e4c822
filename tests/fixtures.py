"""Real processes for integration tests: the API under uvicorn and ``convoy worker``s,
started by the launcher the benchmarks use (``bench.processes``)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.processes import Processes, free_port, stop

ROOT = Path(__file__).resolve().parent.parent

TEST_CATALOG = """
[models.sleepy]
family = "sleepy"
kinds = ["generate"]
description = "test model: sleeps per step"
config = {{ step_s = 0.05, started_marker = "{marker}" }}
max_batch = 4
max_wait_ms = 20

[models.stamped]
family = "sleepy"
kinds = ["generate"]
description = "test model: sleeps per step, draws images that name its process"
config = {{ step_s = 0.05, stamp_pid = true }}
max_batch = 4

[models.parked]
family = "sleepy"
kinds = ["generate"]
description = "test model: on a queue no test worker takes"
queue = "parked"

[models.poison]
family = "poison"
kinds = ["generate"]
description = "test model: kills its worker"
"""


class Service:
    """An API process and any number of worker processes sharing one store and broker."""

    def __init__(self, tmp: Path, redis_url: str | None = None, catalogs: tuple[Path, ...] = (),
                 **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.marker = tmp / "started.txt"
        catalog = tmp / "test-catalog.toml"
        catalog.write_text(TEST_CATALOG.format(marker=self.marker))
        self.env = {
            **os.environ,
            "CONVOY_DATA_DIR": str(tmp / "data"),
            "CONVOY_CATALOG": ":".join(str(p) for p in (catalog, *catalogs)),
            "CONVOY_PLUGINS": "tests.support.plugins",
            "CONVOY_HEARTBEAT_S": "0.5",
            "CONVOY_WORKER_DEAD_AFTER_S": "2.5",
            "CONVOY_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.env.pop("CONVOY_REDIS_URL", None)
        if redis_url:
            self.env["CONVOY_REDIS_URL"] = redis_url
        self.processes = Processes(tmp, self.env, cwd=ROOT)
        self.logs = self.processes.logs  # one per process started, in order
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        return self.processes.spawn(name, ["-m", "service.cli", *args])

    def start_api(self) -> None:
        self.api = self._spawn("api", ["serve", "--no-worker", "--port", str(self.port)])
        self._wait(lambda: httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200, "API")

    def start_worker(self, wait: bool = True, *extra: str) -> subprocess.Popen[bytes]:
        before = self.worker_ids()
        proc = self._spawn("worker", ["worker", "--device", "cpu", "--queues", "convoy", *extra])
        self.workers.append(proc)
        if wait:
            self._wait(lambda: len(self.worker_ids() - before) > 0, "worker")
        return proc

    def worker_ids(self) -> set[str]:
        try:
            r = httpx.get(f"{self.url}/v1/workers", timeout=2)
            return {w["id"] for w in r.json()["workers"]} if r.status_code == 200 else set()
        except httpx.HTTPError:
            return set()

    def _wait(self, ok: Any, what: str, timeout: float = 60.0) -> None:
        self.processes.wait_until(ok, what, timeout, errors=(httpx.HTTPError, OSError))

    def tail(self) -> str:
        return self.processes.tail()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def kill_workers(self, sig: int = signal.SIGKILL) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(sig)
        for proc in self.workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.workers.clear()

    def stop(self) -> None:
        self.kill_workers(signal.SIGKILL)
        if self.api is not None:
            stop(self.api, timeout=10)


def wait_status(client: httpx.Client, job_id: str, statuses: tuple[str, ...],
                timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("status") in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {job.get('status')}, wanted {statuses}")


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models of every kind (built by the tests) and the catalog file serving them."""
    from tests.support.tiny_models import build_tiny_catalog

    return build_tiny_catalog(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session", params=["embedded", "redis"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            tiny_catalog: Path) -> Iterator[Service]:
    """A running API + one worker, in each mode (shared by the tests of the session)."""
    from tests.conftest import redis_db_url

    redis_url = redis_db_url(12) if request.param == "redis" else None
    svc = Service(tmp_path_factory.mktemp(f"svc-{request.param}"), redis_url, (tiny_catalog,))
    svc.mode = request.param  # type: ignore[attr-defined]
    try:
        svc.start_api()
        svc.start_worker()
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def fresh_service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    """A service of its own (for tests that kill or restart processes): API only; the test
    starts its workers. Parametrise with indirect=True: 'embedded' or 'redis'."""
    from tests.conftest import redis_db_url

    mode = getattr(request, "param", "embedded")
    svc = Service(tmp_path, redis_db_url(13) if mode == "redis" else None)
    svc.mode = mode  # type: ignore[attr-defined]
    try:
        svc.start_api()
        yield svc
    finally:
        svc.stop()
