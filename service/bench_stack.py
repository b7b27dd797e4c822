"""What ``convoy bench`` runs: a service of its own (API and worker processes, in either
mode), an HTTP load generator, the same model in-process (loaded as a worker loads it, fed
requests prepared as the service prepares them), and a bare Celery echo on the same broker.

Run as ``python -m service.bench_stack echo-worker`` it is the echo worker: a Celery worker
with one trivial task that sends its argument back on a reply queue, so a round trip
through the broker can be timed without any convoy code in the path.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx

ECHO_TASK = "convoy.bench.echo"
ECHO_QUEUE = "convoy-bench-echo"


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """An API process and worker processes on a store and broker of their own."""

    mode: str  # embedded | redis
    redis_url: str | None = None
    device: str = "cpu"
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"convoy-bench-{self.mode}-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_env = {**os.environ, "CONVOY_DATA_DIR": str(self.tmp / "data"),
                         "CONVOY_LOG_LEVEL": "WARNING", **self.env}
        self.base_env.pop("CONVOY_REDIS_URL", None)
        self.base_env.pop("CONVOY_API_KEYS", None)
        self.base_env.pop("CONVOY_API_KEYS_FILE", None)
        if self.mode == "redis":
            assert self.redis_url, "redis mode needs a Redis URL"
            flush_redis(self.redis_url)
            self.base_env["CONVOY_REDIS_URL"] = self.redis_url

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, *args], env={**self.base_env, **(env or {})},
                                    stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start(self, workers: int = 1, worker_env: dict[str, str] | None = None) -> Stack:
        self._spawn("api", ["-m", "service.cli", "serve", "--no-worker", "--port", str(self.port)])
        for _ in range(workers):
            self.start_worker(worker_env)
        self.wait_ready()
        return self

    def start_worker(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self._spawn("worker", ["-m", "service.cli", "worker", "--device", self.device],
                           env)

    def stop_workers(self) -> None:
        """Stop every process but the API (the first one)."""
        for proc in self.procs[1:]:
            _stop(proc)
        del self.procs[1:]

    def start_echo_worker(self) -> None:
        self._spawn("echo", ["-m", "service.bench_stack", "echo-worker"])

    def wait_ready(self, workers: int = 1, timeout: float = 180.0) -> None:
        """Wait until the API answers and ``workers`` workers beat."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a bench process exited early; logs:\n{self.tail()}")
            try:
                r = httpx.get(f"{self.url}/v1/workers", timeout=2)
                if r.status_code == 200 and len(r.json()["workers"]) >= workers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the bench service did not come up; logs:\n{self.tail()}")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by the API, the workers and this process,
        and in Redis mode by the Redis server (all of it: other users of the server count)."""
        api, *workers = (_cpu_seconds(p.pid) for p in self.procs)
        own = os.times()
        used = {"api": api, "workers": sum(workers), "client": own.user + own.system}
        if self.redis_url:
            import redis

            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
            try:
                info = client.info("cpu")
            finally:
                client.close()
            used["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return used

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds (from /proc; 0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- load -------------------------------------------------------------------------------------
def run_clients(url: str, clients: int, jobs: int, body_for: Callable[[int], dict[str, Any]]
                ) -> tuple[float, list[float]]:
    """Submit ``jobs`` jobs from ``clients`` concurrent clients, each waiting for its job's
    end with ``Prefer: wait``; return (elapsed seconds, per-job latencies).

    The clients speak plain HTTP/1.1 on kept-alive connections: a general-purpose client
    would spend more CPU per request than the service does, on the same cores.
    """
    return asyncio.run(_clients(url, clients, jobs, body_for))


async def _clients(url: str, clients: int, jobs: int, body_for: Callable[[int], dict[str, Any]]
                   ) -> tuple[float, list[float]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [_request(host, json.dumps(body_for(i)).encode()) for i in range(jobs)]
    latencies: list[float] = []
    next_job = 0

    async def one_client() -> None:
        nonlocal next_job
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_job < jobs:
                request = requests[next_job]
                next_job += 1
                t0 = time.perf_counter()
                writer.write(request)
                status, body = await _response(reader)
                if status != 200 or json.loads(body)["status"] != "succeeded":
                    raise RuntimeError(f"job did not succeed: {status} {body[:300]!r}")
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return time.perf_counter() - start, latencies


def _request(host: str, body: bytes) -> bytes:
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Prefer: wait=60\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readline()).split()[1])
    length = None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError("a response without Content-Length")
    return status, await reader.readexactly(length)


# -- the model in-process ----------------------------------------------------------------------
def load_catalog() -> Any:
    from models.catalog import Catalog
    from workers.settings import Settings

    return Catalog.load(Settings().catalog)


def device_of(name: str) -> Any:
    from workers.worker import resolve_device

    return resolve_device(name)


def load_predictor(entry: Any, device: Any) -> Any:
    """The entry's predictor, loaded the way a worker loads it."""
    import torch

    from workers.cache import ModelCache
    from workers.settings import Settings
    from workers.worker import cpu_threads

    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(Settings()))  # as a worker does
    return ModelCache(device).get(entry)


def sample_images(entry: Any, n: int) -> list[str]:
    """``n`` base64 PNGs fit for the entry's input: held-out digits or shapes samples."""
    from models.images import to_pil

    if entry.input.channels == 1:
        from models.data.digits import load_digits_split

        x = load_digits_split(32)[2]
    else:
        from models.data.shapes import make_classification

        x = make_classification(min(n, 256), seed=7)[0]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        to_pil(x[i % len(x)]).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def requests_for(kind: str, inputs: list[dict[str, Any]], entry: Any) -> list[Any]:
    """Predictor requests from job inputs, validated and prepared as the service does."""
    from pydantic import TypeAdapter

    from models.predictor import Request
    from workers.contract import JobRequest, check, prepare

    schema: TypeAdapter[Any] = TypeAdapter(JobRequest)
    out = []
    for raw in inputs:
        body = schema.validate_python({"kind": kind, "model": entry.name, "input": raw})
        data = check(kind, body.input.model_dump(), entry, 1 << 30)
        out.append(Request(kind, prepare(kind, data, entry, 1 << 30)))
    return out


# -- bare Celery round trips -------------------------------------------------------------------
def echo_round_trips(n: int, redis_url: str | None, data_dir: Path) -> list[float]:
    """Seconds per round trip of a trivial task to the echo worker and its reply back, on
    the broker of the given mode."""
    from workers.celery_app import make_celery
    from workers.settings import Settings

    app = make_celery(Settings(redis_url=redis_url, data_dir=data_dir))
    reply = f"convoy-bench-reply-{os.getpid()}"
    times: list[float] = []
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(reply)
        try:
            for i in range(n + 3):
                t0 = time.perf_counter()
                app.send_task(ECHO_TASK, args=[reply, i], queue=ECHO_QUEUE)
                message = queue.get(timeout=30)
                message.ack()
                if message.payload != i:
                    raise RuntimeError(f"echo answered {message.payload!r}, expected {i}")
                if i >= 3:  # the first few warm the connections
                    times.append(time.perf_counter() - t0)
        finally:
            queue.close()
    return times


def echo_worker() -> None:
    """A Celery worker with one task that puts its argument on a reply queue."""
    from workers.celery_app import make_celery
    from workers.settings import Settings

    app = make_celery(Settings())
    conn = app.connection_for_write()
    queues: dict[str, Any] = {}  # one reply queue per bench process, declared once

    @app.task(name=ECHO_TASK, ignore_result=True)
    def echo(reply: str, value: Any) -> None:
        if reply not in queues:
            queues[reply] = conn.SimpleQueue(reply)
        queues[reply].put(value)

    app.Worker(pool="threads", concurrency=1, queues=[ECHO_QUEUE], loglevel="WARNING",
               without_heartbeat=True, without_mingle=True, without_gossip=True,
               quiet=True).start()


if __name__ == "__main__":
    if sys.argv[1:] == ["echo-worker"]:
        echo_worker()
    else:
        raise SystemExit("usage: python -m service.bench_stack echo-worker")
