"""``convoy bench generate --arrivals poisson --load L``: generation latency under open-loop
arrivals, with static batches and with step-level batching, in the same run.

Closed-loop clients wait for a job before they send the next one, so they never see what
decides a generation service's latency: a job that arrives while a batch samples. Here
jobs arrive as a Poisson process at ``load`` times the capacity measured first (jobs per
second of static batching kept saturated), whatever the service does with them; the same
arrival times are replayed against a service with static batches
(``CONVOY_STEP_BATCHING=false``) and one with step-level batching. Latency runs from a
job's scheduled arrival to its answer (``Prefer: wait``); throughput is jobs answered per
second from the first arrival to the last answer. Both services run side by side (in
Redis mode on the bench's database and the next one) and the jobs are replayed in rounds,
alternating which service goes first, so that other work on the machine hits both alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table

from bench.generate import GENERATE_MODEL, generate
from bench.inprocess import load_catalog
from bench.load import _request, _response, run_clients
from bench.report import BenchOptions, console, ms, pct, write
from bench.stack import Stack
from bench.throughput import batch_counts

MODES = (("static", "false"), ("step", "true"))  # label, CONVOY_STEP_BATCHING
P50_TARGET = 0.6  # step-level p50 at most this share of static's
THROUGHPUT_TARGET = 0.97  # and throughput at least this share (open loop: both ≈ the arrival rate)


def poisson_arrivals(rate: float, jobs: int, seed: int) -> list[float]:
    """Seconds from the start at which each of ``jobs`` jobs arrives (exponential gaps)."""
    rng, t, times = random.Random(seed), 0.0, []
    for _ in range(jobs):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def replay(url: str, arrivals: list[float], body_for: Any) -> tuple[float, list[float]]:
    """Send job i at ``arrivals[i]`` seconds, each on a connection of its own, whether or
    not earlier ones are answered; return (seconds from the first arrival to the last
    answer, latency of each job from its scheduled arrival)."""
    return asyncio.run(_replay(url, arrivals, body_for))


async def _replay(url: str, arrivals: list[float], body_for: Any) -> tuple[float, list[float]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [_request(host, "/v1/jobs", {"Prefer": "wait=60"}, json.dumps(body_for(i)).encode())
                for i in range(len(arrivals))]
    start = time.perf_counter() + 0.2
    done: list[float] = []

    async def one(i: int) -> float:
        at = start + arrivals[i]
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(requests[i])
            status, body = await _response(reader)
        finally:
            writer.close()
        if status != 200 or json.loads(body)["status"] != "succeeded":
            raise RuntimeError(f"job did not succeed: {status} {body[:300]!r}")
        done.append(time.perf_counter())
        return done[-1] - at

    latencies = await asyncio.gather(*(one(i) for i in range(len(arrivals))))
    return max(done) - (start + arrivals[0]), list(latencies)


def _next_db(url: str, k: int) -> str:
    """The Redis URL of the database ``k`` after the one ``url`` names."""
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) + k}"


def open_loop(opts: BenchOptions, load: float = 0.7, steps: tuple[int, ...] = (20,),
              jobs: int = 150, seed: int = 0, rounds: int = 3) -> dict[str, Any]:
    """p50/p99 latency and throughput of generate jobs arriving as a Poisson process at
    ``load`` of static batching's capacity, with static and with step-level batching.
    Each job's steps are drawn from ``steps``. Both services run side by side; the jobs
    are replayed in ``rounds``, alternating which service goes first, so that other work
    on the machine hits both alike."""
    catalog = load_catalog()
    name = opts.model or GENERATE_MODEL
    if name not in catalog.entries:
        raise SystemExit(f"{name} is not in the catalog (train it: convoy train {name})")
    entry = catalog.get(name)
    labels = entry.labels or [None]
    draw = random.Random(seed + 1)
    job_steps = [draw.choice(steps) for _ in range(max(20, int(jobs * opts.scale)))]

    def body(i: int) -> dict[str, Any]:
        inp = {"n": 1, "seed": i, "steps": job_steps[i % len(job_steps)],
               "class_label": labels[i % len(labels)]}
        return {"kind": "generate", "model": entry.name, "input": inp}

    mode = opts.modes[-1]
    per_round = max(1, len(job_steps) // rounds)
    with contextlib.ExitStack() as stacks:
        services = {}
        for k, (label, flag) in enumerate(MODES):  # in Redis mode: the bench's database, the next
            own = BenchOptions(**{**vars(opts), "redis_url": _next_db(opts.redis_url, k)})
            services[label] = stacks.enter_context(Stack(
                mode, own.redis_url if mode == "redis" else None, device=opts.device,
                env={"CONVOY_PRELOAD": entry.name, "CONVOY_STEP_BATCHING": flag}))
            services[label].start()
        clients = 2 * entry.max_batch
        for stack in services.values():
            run_clients(stack.url, clients, 2 * clients, body)  # warm
        n = max(4 * clients, len(job_steps) // 4)
        busy: dict[str, float] = dict.fromkeys(services, 0.0)
        for label in [*services, *reversed(services)]:  # saturated, alternated
            busy[label] += run_clients(services[label].url, clients, n, body)[0]
        saturated = {label: 2 * n / seconds for label, seconds in busy.items()}
        capacity = saturated["static"]
        time.sleep(1.5)  # the warm-up's batches reach /metrics with the next heartbeat
        before = {label: batch_counts(s.url) for label, s in services.items()}
        spans: dict[str, float] = dict.fromkeys(services, 0.0)
        latencies: dict[str, list[float]] = {label: [] for label in services}
        for r in range(rounds):
            order = list(services) if r % 2 == 0 else list(reversed(services))
            arrivals = poisson_arrivals(load * capacity, per_round, seed + r)
            for label in order:
                offset = r * per_round
                span, lat = replay(services[label].url, arrivals,
                                   lambda i, offset=offset: body(offset + i))
                spans[label] += span
                latencies[label] += lat
        time.sleep(1.5)
        after = {label: batch_counts(s.url) for label, s in services.items()}
    rows = []
    for label in services:
        lat = latencies[label]
        b, a = before[label], after[label]
        rows.append({
            "batching": label, "jobs": len(lat), "saturated_jobs_per_s": saturated[label],
            "jobs_per_s": len(lat) / spans[label], "p50_s": pct(lat, 0.5),
            "p99_s": pct(lat, 0.99), "mean_s": sum(lat) / len(lat),
            "mean_batch": (a[0] - b[0]) / max(1.0, a[1] - b[1]),
        })
    static, step = rows
    verdict = {"p50_ratio": step["p50_s"] / static["p50_s"],
               "throughput_ratio": step["jobs_per_s"] / static["jobs_per_s"]}
    verdict["meets_target"] = (verdict["p50_ratio"] <= P50_TARGET
                               and verdict["throughput_ratio"] >= THROUGHPUT_TARGET)
    rate = load * capacity
    mix = ",".join(str(s) for s in steps)
    table = Table("batching", "jobs", "jobs/s", "p50 ms", "p99 ms", "mean ms",
                  "mean batch", "saturated jobs/s",
                  title=f"generate under Poisson arrivals: {entry.name}, steps {mix}, load "
                        f"{load} of {capacity:.2f} jobs/s = {rate:.2f} jobs/s, {rounds} rounds "
                        f"({mode}, {opts.device})")
    for r in rows:
        table.add_row(r["batching"], str(r["jobs"]), f"{r['jobs_per_s']:.2f}", ms(r["p50_s"]),
                      ms(r["p99_s"]), ms(r["mean_s"]), f"{r['mean_batch']:.1f}",
                      f"{r['saturated_jobs_per_s']:.2f}")
    console.print(table)
    console.print(f"step-level vs static: p50 {verdict['p50_ratio']:.2f}x (target <= "
                  f"{P50_TARGET}), throughput {verdict['throughput_ratio']:.2f}x (target >= "
                  f"{THROUGHPUT_TARGET}): {'met' if verdict['meets_target'] else 'NOT met'}")
    result = {"scenario": "generate-poisson", "model": entry.name, "mode": mode,
              "steps": list(steps), "load": load, "capacity_jobs_per_s": capacity,
              "arrival_rate": rate, "seed": seed, "rounds": rounds, "rows": rows, **verdict}
    write(opts, "generate-poisson", result)
    return result


def generate_jobs(
    opts: BenchOptions,
    arrivals: Annotated[str, typer.Option(
        help="closed: saturating clients, against in-process; poisson: open-loop arrivals, "
             "static against step-level batching (on the bench's database and the next)")
    ] = "closed",
    load: Annotated[float, typer.Option(help="poisson: share of the measured capacity")] = 0.7,
    steps: Annotated[str, typer.Option(
        help="sampling steps of every job; poisson: a comma-separated mix to draw each job's "
             "from")] = "20",
    jobs: Annotated[int, typer.Option(help="poisson: jobs per batching mode")] = 150,
    seed: Annotated[int, typer.Option(help="poisson: seed of the arrival times")] = 0,
    rounds: Annotated[int, typer.Option(help="poisson: alternations of the two services")] = 3,
) -> dict[str, Any] | None:
    """Generate jobs: images/s against the sampling loop in-process (closed), or p50/p99
    latency and throughput under Poisson arrivals, static against step-level batching."""
    mix = tuple(int(s) for s in steps.split(",") if s.strip())
    if arrivals == "closed":
        return generate(opts, steps=mix[0])
    if arrivals != "poisson":
        raise typer.BadParameter(f"arrivals must be closed or poisson, not {arrivals!r}")
    if not 0 < load < 1:
        raise typer.BadParameter(f"load must be between 0 and 1, got {load}")
    return open_loop(opts, load=load, steps=mix, jobs=jobs, seed=seed, rounds=rounds)
