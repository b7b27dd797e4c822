"""Prometheus metrics. The API counts what it sees; workers report theirs through their
heartbeat, and a collector turns the live workers' reports into metric families."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from workers.store import JobStore

REGISTRY = CollectorRegistry()
JOBS_SUBMITTED = Counter("convoy_jobs_submitted", "Jobs accepted by this API process",
                         ["kind", "model"], registry=REGISTRY)


class WorkerCollector(Collector):
    def __init__(self, store_getter: Any) -> None:
        self.store_getter = store_getter

    def collect(self) -> Iterator[Any]:
        store: JobStore | None = self.store_getter()
        workers = store.workers() if store is not None else []
        yield GaugeMetricFamily("convoy_workers", "Live workers", value=len(workers))
        jobs = CounterMetricFamily("convoy_jobs", "Jobs finished by live workers",
                                   labels=["kind", "model", "status"])
        totals: dict[tuple[str, str, str], float] = {}
        hists: dict[str, dict[str, Any]] = {}
        for w in workers:
            stats = w.get("stats", {})
            for key, n in stats.get("jobs", {}).items():
                k = tuple(key.split("|"))
                totals[k] = totals.get(k, 0) + n  # type: ignore[index]
            for name, h in stats.get("histograms", {}).items():
                agg = hists.setdefault(name, {"buckets": {}, "sum": 0.0, "help": h.get("help", "")})
                agg["sum"] += h["sum"]
                for le, c in h["buckets"].items():
                    agg["buckets"][le] = agg["buckets"].get(le, 0) + c
        for (kind, model, status), n in totals.items():
            jobs.add_metric([kind, model, status], n)
        yield jobs
        for name, agg in hists.items():
            buckets = sorted(agg["buckets"].items(), key=lambda kv: float(kv[0]))
            yield HistogramMetricFamily(f"convoy_{name}", agg["help"], buckets=buckets,
                                        sum_value=agg["sum"])


def render() -> bytes:
    """The API's counters and the live workers' reports, as Prometheus text."""
    return generate_latest(REGISTRY)
