"""The open-loop load of ``convoy bench generate --arrivals poisson``: arrival times, a
replay that sends each job at its time whatever the earlier ones do, and the databases
the two services use."""

from __future__ import annotations

import statistics
import time

import pytest

from bench.arrivals import _next_db, poisson_arrivals, replay
from tests.bench.test_bench import _Jobs, jobs_server  # noqa: F401  (a fixture)


def test_poisson_arrivals_have_the_asked_rate_and_repeat_with_their_seed() -> None:
    times = poisson_arrivals(rate=20.0, jobs=4000, seed=3)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert all(g > 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(1 / 20.0, rel=0.1)
    assert statistics.stdev(gaps) == pytest.approx(1 / 20.0, rel=0.1)  # exponential: sd = mean
    assert poisson_arrivals(20.0, 50, 3) == times[:50]
    assert poisson_arrivals(20.0, 50, 4) != times[:50]


def test_replay_sends_each_job_once_at_its_time(jobs_server: str) -> None:  # noqa: F811
    started = time.perf_counter()
    span, latencies = replay(jobs_server, [0.0, 0.3, 0.6], lambda i: {"n": i})
    assert sorted(b["n"] for b in _Jobs.seen) == [0, 1, 2]
    assert time.perf_counter() - started >= 0.6  # not sent before their times
    assert 0.6 <= span < 5 and len(latencies) == 3 and all(0 < x < 2 for x in latencies)


def test_the_two_services_take_the_bench_database_and_the_next() -> None:
    assert _next_db("redis://127.0.0.1:6379/9", 0) == "redis://127.0.0.1:6379/9"
    assert _next_db("redis://127.0.0.1:6379/9", 1) == "redis://127.0.0.1:6379/10"
