"""The contenders of ``convoy bench peers``: how each one starts, where it takes requests,
what a good answer looks like, and how its CPU time splits into parts, read from /proc.

Parts: ``api`` (the HTTP server processes), ``worker`` (where the model runs, the model's
own CPU included: the scenario subtracts it), and what else the stack runs: ``redis`` (the
whole server; the bench's own database on it) or ``ray`` (Ray's GCS, raylet, controller and
the driver).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import httpx

from bench.load import convoy_succeeded
from bench.peers.model import ENTRY, SIZE
from bench.processes import Processes, cmdline, cpu_seconds, family_pids, free_port
from bench.stack import Stack, flush_redis, redis_cpu_seconds


class Contender(ABC):
    """One serving stack: ``start``, take requests at ``url + path``, ``stop``."""

    name = ""
    path = "/predict"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.url = ""

    def body(self, image: str) -> dict[str, Any]:
        return {"image": image}

    def ok(self, status: int, body: bytes) -> bool:
        """A good answer: 200 with the predictions of the image."""
        return status == 200 and bool(json.loads(body)["predictions"])

    @abstractmethod
    def start(self, work: Path, catalog: Path, redis_url: str) -> None:
        """Start the stack (files under ``work``) serving the model of ``catalog``."""

    @abstractmethod
    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far, by part."""

    @abstractmethod
    def stop(self) -> None: ...


class Convoy(Contender):
    """convoy in Redis mode: ``api_processes`` API processes and one worker."""

    path = "/v1/jobs"
    headers: ClassVar[dict[str, str]] = {"Prefer": "wait=60"}

    def __init__(self, api_processes: int = 1) -> None:
        super().__init__()
        self.api_processes = api_processes
        self.name = "convoy" if api_processes == 1 else f"convoy, {api_processes} API processes"

    def body(self, image: str) -> dict[str, Any]:
        return {"kind": "classify", "model": ENTRY, "input": {"image": image}}

    def ok(self, status: int, body: bytes) -> bool:
        return convoy_succeeded(status, body)

    def start(self, work: Path, catalog: Path, redis_url: str) -> None:
        self.stack = Stack("redis", redis_url, env={"CONVOY_CATALOG": str(catalog),
                                                   "CONVOY_PRELOAD": ENTRY},
                           api_processes=self.api_processes)
        self.stack.start()
        self.url = self.stack.url

    def cpu(self) -> dict[str, float]:
        used = self.stack.cpu_seconds()
        return {"api": used["api"], "worker": used["workers"], "redis": used["redis"]}

    def stop(self) -> None:
        self.stack.stop()


class _Spawned(Contender):
    """A contender made of ``python -m`` processes of the bench's own."""

    def _launch(self, work: Path, env: dict[str, str] | None = None) -> None:
        self.processes = Processes(work, {**os.environ, **(env or {})})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait(self, timeout: float = 240.0) -> None:
        """Until a request is answered well: the model is loaded then."""
        image = one_image()

        def answers() -> bool:
            r = httpx.post(self.url + self.path, json=self.body(image), timeout=30,
                           headers=self.headers)
            if r.status_code in (400, 405, 413, 415, 422):  # refused: waiting will not help
                raise RuntimeError(f"{self.name} refused the request: {r.status_code} {r.text}")
            return self.ok(r.status_code, r.content)

        self.processes.wait_until(answers, self.name, timeout, watch=True,
                                  errors=(httpx.HTTPError, ValueError, KeyError))

    def _family(self) -> set[int]:
        return set().union(*(family_pids(p.pid) for p in self.processes.procs))

    def stop(self) -> None:
        self.processes.stop_all()


class LitServe(_Spawned):
    name = "LitServe"

    def start(self, work: Path, catalog: Path, redis_url: str) -> None:
        self._launch(work)
        self.pids = work / "litserve-pids"
        self.pids.mkdir(exist_ok=True)
        self.processes.spawn("litserve", ["-m", "bench.peers.litserve_server", str(self.port),
                                          str(catalog), str(self.pids)], new_session=True)
        self._wait()

    def cpu(self) -> dict[str, float]:
        workers = {int(p.name.split("-")[1]) for p in self.pids.glob("worker-*")}
        used = {"api": 0.0, "worker": 0.0}
        for pid in self._family():
            used["worker" if pid in workers else "api"] += cpu_seconds(pid)
        return used


class RayServe(_Spawned):
    name = "Ray Serve"

    def start(self, work: Path, catalog: Path, redis_url: str) -> None:
        self._launch(work, {"RAY_USAGE_STATS_ENABLED": "0"})
        self.processes.spawn("ray", ["-m", "bench.peers.ray_server", str(self.port),
                                     str(catalog)], new_session=True)
        self._wait()

    def cpu(self) -> dict[str, float]:
        used = {"api": 0.0, "worker": 0.0, "ray": 0.0}
        for pid in self._family():
            line = cmdline(pid)  # Ray names its actor processes ray::<class>
            part = ("api" if "ProxyActor" in line else
                    "worker" if "ServeReplica" in line else "ray")
            used[part] += cpu_seconds(pid)
        return used


class FastAPICelery(_Spawned):
    name = "FastAPI + Celery"

    def start(self, work: Path, catalog: Path, redis_url: str) -> None:
        flush_redis(redis_url)
        self.redis_url = redis_url
        self._launch(work, {"BENCH_BROKER": redis_url, "BENCH_CATALOG": str(catalog)})
        self.api = self.processes.spawn("api", ["-m", "bench.peers.celery_baseline", "api",
                                                str(self.port)], new_session=True)
        self.worker = self.processes.spawn("worker", ["-m", "bench.peers.celery_baseline",
                                                      "worker"], new_session=True)
        self._wait()

    def cpu(self) -> dict[str, float]:
        return {"api": sum(cpu_seconds(p) for p in family_pids(self.api.pid)),
                "worker": sum(cpu_seconds(p) for p in family_pids(self.worker.pid)),
                "redis": redis_cpu_seconds(self.redis_url)}


def available(names: tuple[str, ...] | None = None) -> list[Contender]:
    """The contenders to run: those named (all by default) whose packages are importable;
    nothing is installed at run time."""
    everyone: dict[str, Any] = {
        "convoy": Convoy, "convoy-2": lambda: Convoy(2), "litserve": LitServe,
        "ray": RayServe, "celery": FastAPICelery,
    }
    needs = {"litserve": "litserve", "ray": "ray"}
    unknown = set(names or ()) - set(everyone)
    if unknown:
        raise ValueError(f"unknown contenders {sorted(unknown)}; known: {sorted(everyone)}")
    return [make() for name, make in everyone.items()
            if (names is None or name in names)
            and (name not in needs or importlib.util.find_spec(needs[name]) is not None)]


def one_image() -> str:
    """A base64 PNG of the contenders' input size (for readiness checks)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
