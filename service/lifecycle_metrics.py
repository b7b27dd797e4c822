"""Prometheus families read from the store, exported once per deployment.

Queue depth and the oldest queued job's age (per queue and model), device-seconds (per owner
and model), and the workers' job counters and time histograms (per kind and model) come
from the store, where they outlive any worker (``core/cluster_stats.py``). Every API
replica could read them; only the one holding the ``metrics`` lease exports them, so
``sum`` over replicas counts each once. When that replica goes, another takes the lease
within ``LEASE_S`` and the same totals continue under its ``instance`` label (counters
that do not restart from zero).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from core.cluster_stats import open_cluster_stats
from core.store import StoreUnavailable

if TYPE_CHECKING:
    from service.deps import State

LEASE_S = 30.0
HOLDER = f"{socket.gethostname()}-{os.getpid()}"
HISTOGRAMS = {"queue_wait_seconds": "Time jobs waited between submission and their start",
              "run_seconds": "Time from a job's start on a worker to its end"}


class LifecycleCollector(Collector):
    def __init__(self, state_getter: Callable[[], State | None]) -> None:
        self.state_getter = state_getter

    def collect(self) -> Iterator[Any]:
        state = self.state_getter()
        life = state.lifecycle if state is not None else None
        if state is None or life is None or life.order is None:
            return
        try:
            if not life.order.lead("metrics", HOLDER, LEASE_S):
                return
            yield from self._queues(state)
            yield from self._usage(state)
            yield from self._workers(state)
        except StoreUnavailable:
            return

    def _queues(self, state: State) -> Iterator[Any]:
        life = state.lifecycle
        assert life.order is not None and life.estimator is not None
        depth = GaugeMetricFamily("convoy_queue_depth", "Jobs queued, by queue and model",
                                  labels=["queue", "model"])
        oldest = GaugeMetricFamily("convoy_queue_oldest_age_seconds", "Age of the oldest "
                                   "queued job, by queue and model", labels=["queue", "model"])
        now = time.time()
        for queue in life.order.queues():
            snap = life.estimator.state(queue)
            per: dict[str, list[float]] = {}
            for job_id in snap.order:
                per.setdefault(snap.models.get(job_id, ""), []).append(snap.created[job_id])
            for model, created in sorted(per.items()):
                depth.add_metric([queue, model], len(created))
                oldest.add_metric([queue, model], max(0.0, now - min(created)))
        yield depth
        yield oldest

    def _usage(self, state: State) -> Iterator[Any]:
        meter = state.lifecycle.meter
        if meter is None:
            return
        used = CounterMetricFamily("convoy_device_seconds", "Device-seconds used, by owner "
                                   "and model (each job's share of its batches)",
                                   labels=["owner", "model"])
        for (owner, model), seconds in sorted(meter.totals().items()):
            used.add_metric([owner, model], seconds)
        yield used

    def _workers(self, state: State) -> Iterator[Any]:
        cluster = open_cluster_stats(state.store)
        if cluster is None:
            return
        totals = cluster.totals()
        jobs = CounterMetricFamily("convoy_worker_jobs", "Jobs finished by all workers, "
                                   "gone ones included", labels=["kind", "model", "status"])
        for key, n in sorted(totals.get("jobs", {}).items()):
            jobs.add_metric(key.split("|"), n)
        yield jobs
        families = {name: HistogramMetricFamily(f"convoy_job_{name}", help_,
                                                labels=["kind", "model"])
                    for name, help_ in HISTOGRAMS.items()}
        for key, h in sorted(totals.get("by_model", {}).items()):
            name, kind, model = key.split("|", 2)
            if name in families:
                buckets = sorted(h["buckets"].items(), key=lambda kv: float(kv[0]))
                families[name].add_metric([kind, model], buckets, sum_value=h["sum"])
        yield from families.values()
