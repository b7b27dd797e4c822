"""``convoy bench throughput``: classify jobs from 1, 8 and 64 concurrent clients, against
the same model called in-process in batches of ``max_batch``, and with batching switched
off."""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from rich.table import Table

from bench.inprocess import (
    device_of,
    direct_rate,
    load_catalog,
    load_predictor,
    requests_for,
    sample_images,
)
from bench.load import run_clients
from bench.report import BenchOptions, console, ms, pct, write
from bench.stack import Stack

THROUGHPUT_MODELS = ("resnet18-shapes", "lenet5-digits")  # the first one present is used


def throughput_model(opts: BenchOptions) -> Any:
    """The catalog entry of ``--model``, else the first of ``THROUGHPUT_MODELS`` present."""
    catalog = load_catalog()
    for name in ((opts.model,) if opts.model else THROUGHPUT_MODELS):
        if name in catalog.entries:
            return catalog.get(name)
    raise SystemExit(f"none of {THROUGHPUT_MODELS} is in the catalog; train lenet5-digits")


def throughput(opts: BenchOptions, levels: tuple[int, ...] = (1, 8, 64)) -> dict[str, Any]:
    """Jobs per second at each client count, against the model in-process, batched."""
    entry = throughput_model(opts)
    predictor = load_predictor(entry, device_of(opts.device))
    images = sample_images(entry, 256)
    requests = requests_for("classify", [{"image": im} for im in images], entry)
    direct_n = max(entry.max_batch, opts.n(512) // entry.max_batch * entry.max_batch)
    direct_requests = [requests[i % len(requests)] for i in range(direct_n)]

    def body(i: int) -> dict[str, Any]:
        return {"kind": "classify", "model": entry.name, "input": {"image": images[i % 256]}}

    def jobs_for(clients: int) -> int:
        return opts.n(max(100, 20 * clients))

    direct: list[float] = []
    rows = []
    mode = opts.modes[-1]
    for batching in (True, False):
        env = {} if batching else {"CONVOY_BATCHING": "false"}
        with Stack(mode, opts.redis_url if mode == "redis" else None, device=opts.device,
                   env={"CONVOY_PRELOAD": entry.name, **env}) as stack:
            stack.start()
            run_clients(stack.url, 8, 32, body)  # warm
            for clients in (levels if batching else levels[-1:]):
                direct.append(
                    direct_rate(predictor, direct_requests, entry.max_batch).images_per_s)
                batches, cpu = batch_counts(stack.url), stack.cpu_seconds()
                elapsed, lat = run_clients(stack.url, clients, jobs_for(clients), body)
                used = {k: (v - cpu[k]) / len(lat) for k, v in stack.cpu_seconds().items()}
                time.sleep(1.5)  # the worker reports its batches with its next heartbeat
                after = batch_counts(stack.url)
                rows.append({"batching": batching, "clients": clients, "jobs": len(lat),
                             "jobs_per_s": len(lat) / elapsed, "p50_s": pct(lat, 0.5),
                             "p99_s": pct(lat, 0.99), "cpu_s_per_job": used,
                             "mean_batch": (after[0] - batches[0]) / max(1.0, after[1] - batches[1])})
    direct.append(direct_rate(predictor, direct_requests, entry.max_batch).images_per_s)
    direct_median = statistics.median(direct)
    off = next(r for r in rows if not r["batching"])
    for r in rows:
        r["vs_direct"] = r["jobs_per_s"] / direct_median
        r["vs_batching_off"] = r["jobs_per_s"] / off["jobs_per_s"]
    top = next(r for r in rows if r["batching"] and r["clients"] == levels[-1])
    verdict = {"vs_direct_target": 0.8, "vs_batching_off_target": 2.0,
               "meets_target": top["vs_direct"] >= 0.8 and top["vs_batching_off"] >= 2.0}

    parts = ("api", "workers", "client") + (("redis",) if mode == "redis" else ())
    table = Table("batching", "clients", "jobs", "jobs/s", "p50 ms", "p99 ms", "mean batch",
                  "CPU ms/job " + "+".join(p.replace("workers", "worker") for p in parts),
                  "vs direct", "vs batching off",
                  title=f"throughput: classify {entry.name} ({mode}, {opts.device}); direct "
                        f"in-process, batches of {entry.max_batch}: {direct_median:.1f} images/s")
    for r in rows:
        table.add_row("on" if r["batching"] else "off", str(r["clients"]), str(r["jobs"]),
                      f"{r['jobs_per_s']:.1f}", ms(r["p50_s"]), ms(r["p99_s"]),
                      f"{r['mean_batch']:.1f}",
                      "+".join(f"{r['cpu_s_per_job'][k] * 1000:.1f}" for k in parts),
                      f"{r['vs_direct']:.2f}", f"{r['vs_batching_off']:.2f}")
    console.print(table)
    console.print(f"at {levels[-1]} clients: {top['vs_direct']:.2f} of direct (target 0.8), "
                  f"{top['vs_batching_off']:.2f}x batching off (target 2): "
                  f"{'met' if verdict['meets_target'] else 'NOT met'}")
    result = {"scenario": "throughput", "model": entry.name, "mode": mode,
              "max_batch": entry.max_batch, "direct_images_per_s": direct_median,
              "direct_runs": direct, "rows": rows, **verdict}
    write(opts, "throughput", result)
    return result


def batch_counts(url: str) -> tuple[float, float]:
    """(requests, batches) the workers report in /metrics so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("convoy_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("convoy_batch_size_count"):
            count += float(line.split()[-1])
    return total, count

