"""A convoy service of the bench's own: API and worker processes on a store and broker of
their own (a Redis database the bench flushes, or a data dir under a temporary folder)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench.processes import Processes, cpu_seconds, free_port, session_pids


def bench_redis_url(explicit: str | None, db: int) -> str:
    """The Redis database a bench may flush: ``explicit`` as given, else database ``db`` on
    the server of CONVOY_REDIS_URL (or the local one) — never the service's own database."""
    if explicit:
        return explicit
    base = os.environ.get("CONVOY_REDIS_URL") or "redis://127.0.0.1:6379"
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    finally:
        client.close()


def redis_cpu_seconds(url: str) -> float:
    """User + system CPU seconds of the Redis server so far (its ``INFO cpu``, the same
    figures /proc holds; all of it: other users of the server count)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Stack:
    """An API (``api_processes`` uvicorn processes) and worker processes."""

    def __init__(self, mode: str, redis_url: str | None = None, device: str = "cpu",
                 env: dict[str, str] | None = None, api_processes: int = 1) -> None:
        self.mode = mode  # embedded | redis
        self.redis_url = redis_url
        self.device = device
        self.api_processes = api_processes
        self.tmp = Path(tempfile.mkdtemp(prefix=f"convoy-bench-{mode}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base_env = {**os.environ, "CONVOY_DATA_DIR": str(self.tmp / "data"),
                    "CONVOY_LOG_LEVEL": "WARNING", **(env or {})}
        for name in ("CONVOY_REDIS_URL", "CONVOY_API_KEYS", "CONVOY_API_KEYS_FILE"):
            base_env.pop(name, None)
        if mode == "redis":
            assert redis_url, "redis mode needs a Redis URL"
            flush_redis(redis_url)
            base_env["CONVOY_REDIS_URL"] = redis_url
        self.processes = Processes(self.tmp, base_env)

    def start(self, workers: int = 1) -> Stack:
        args = ["-m", "service.cli", "serve", "--no-worker", "--port", str(self.port)]
        if self.api_processes > 1:
            args += ["--workers", str(self.api_processes)]
        self.api = self.processes.spawn("api", args, new_session=True)
        for _ in range(workers):
            self.processes.spawn("worker", ["-m", "service.cli", "worker",
                                            "--device", self.device])
        self.wait_ready(workers)
        return self

    def start_echo_worker(self) -> None:
        self.processes.spawn("echo", ["-m", "bench.echo"])

    def wait_ready(self, workers: int = 1, timeout: float = 180.0) -> None:
        """Wait until the API answers and ``workers`` workers beat."""
        def ready() -> bool:
            r = httpx.get(f"{self.url}/v1/workers", timeout=2)
            return r.status_code == 200 and len(r.json()["workers"]) >= workers

        self.processes.wait_until(ready, "the bench service", timeout, watch=True,
                                  errors=(httpx.HTTPError,))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by the API processes, the workers and this
        process, and in Redis mode by the Redis server."""
        api = sum(cpu_seconds(pid) for pid in session_pids(self.api.pid))
        workers = sum(cpu_seconds(p.pid) for p in self.processes.procs if p is not self.api)
        own = os.times()
        used = {"api": api, "workers": workers, "client": own.user + own.system}
        if self.redis_url:
            used["redis"] = redis_cpu_seconds(self.redis_url)
        return used

    def tail(self) -> str:
        return self.processes.tail(2000)

    def stop(self) -> None:
        self.processes.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
