"""What a worker counts about its jobs, reported through its heartbeat for ``GET /metrics``:
jobs by kind/model/status and histograms of queue wait, run time and batch size."""

from __future__ import annotations

import bisect
import threading
from typing import Any

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EWMA = 0.3  # weight of the newest batch in the moving averages of run times


class Histogram:
    def __init__(self, bounds: tuple[float, ...], help: str) -> None:
        self.bounds = bounds
        self.help = help
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        """Cumulative bucket counts keyed by upper bound, as Prometheus has them."""
        buckets: dict[str, int] = {}
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets["+Inf" if bound == float("inf") else str(float(bound))] = running
        return {"buckets": buckets, "sum": self.sum, "help": self.help}


class WorkerStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: dict[str, int] = {}
        self.histograms = {
            "queue_wait_seconds": Histogram(SECONDS, "Time jobs waited between submission and "
                                                     "their start on a worker"),
            "run_seconds": Histogram(SECONDS, "Time from a job's start on a worker to its end"),
            "batch_size": Histogram(SIZES, "Requests per batched forward pass or sampling loop"),
        }
        self.models: dict[str, dict[str, float]] = {}  # model → run_s, job_s, batches
        self.by_model: dict[str, Histogram] = {}  # "name|kind|model" → histogram

    def job(self, kind: str, model: str, status: str, queue_wait_s: float | None = None,
            run_s: float | None = None) -> None:
        """Count a job that ended here; the times only when it ran here."""
        with self._lock:
            key = f"{kind}|{model}|{status}"
            self.jobs[key] = self.jobs.get(key, 0) + 1
            if queue_wait_s is not None:
                self.histograms["queue_wait_seconds"].observe(max(0.0, queue_wait_s))
                self._labelled("queue_wait_seconds", kind, model).observe(max(0.0, queue_wait_s))
            if run_s is not None:
                self.histograms["run_seconds"].observe(run_s)
                self._labelled("run_seconds", kind, model).observe(run_s)
                m = self.models.get(model)
                if m is not None:  # a job's whole stay on the worker, claim to record
                    m["wall_s"] = m.get("wall_s", run_s) + EWMA * (run_s - m.get("wall_s", run_s))

    def _labelled(self, name: str, kind: str, model: str) -> Histogram:
        key = f"{name}|{kind}|{model}"
        if key not in self.by_model:
            self.by_model[key] = Histogram(SECONDS, "")
        return self.by_model[key]

    def measured(self, model: str, seconds: float, size: int) -> None:
        """A batch of ``model`` took ``seconds`` for ``size`` jobs: moving averages of a
        batch's time and of a job's share (what queue ETAs are estimated from)."""
        with self._lock:
            m = self.models.setdefault(model, {"run_s": seconds, "job_s": seconds / size,
                                               "batches": 0})
            m["run_s"] += EWMA * (seconds - m["run_s"])
            m["job_s"] += EWMA * (seconds / max(1, size) - m["job_s"])
            m["batches"] += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.histograms["batch_size"].observe(size)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"jobs": dict(self.jobs), "models": {k: dict(v) for k, v in self.models.items()},
                    "by_model": {k: h.snapshot() for k, h in self.by_model.items()},
                    "histograms": {name: h.snapshot() for name, h in self.histograms.items()}}
