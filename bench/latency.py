"""``convoy bench latency``: a classify job through HTTP with ``Prefer: wait``, one at a
time, against the model's own forward time (in-process) and a bare Celery round trip on
the same broker, per mode."""

from __future__ import annotations

from typing import Any

import httpx
from rich.table import Table

from bench.echo import echo_round_trips
from bench.inprocess import device_of, load_catalog, load_predictor, requests_for, sample_images
from bench.report import BenchOptions, console, ms, pct, timed, write
from bench.stack import Stack

LATENCY_MODEL = "lenet5-digits"


def latency(opts: BenchOptions) -> dict[str, Any]:
    """p50/p99 of one classify job at a time, against the forward pass and a Celery echo."""
    entry = load_catalog().get(opts.model or LATENCY_MODEL)
    predictor = load_predictor(entry, device_of(opts.device))
    image = sample_images(entry, 1)[0]
    body = {"kind": "classify", "model": entry.name, "input": {"image": image}}
    request = requests_for("classify", [{"image": image}], entry)
    rounds, per_round = 5, opts.n(40)
    rows = []
    for mode in opts.modes:
        with Stack(mode, opts.redis_url if mode == "redis" else None, device=opts.device,
                   env={"CONVOY_PRELOAD": entry.name}) as stack:
            stack.start()
            stack.start_echo_worker()
            http: list[float] = []
            forward: list[float] = []
            echo: list[float] = []
            with httpx.Client(base_url=stack.url, timeout=60) as client:
                def one() -> None:
                    r = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=30"})
                    if r.status_code != 200 or r.json()["status"] != "succeeded":
                        raise RuntimeError(f"job did not succeed: {r.status_code} {r.text[:300]}")

                for _ in range(10):  # warm-up: connections, caches, allocator
                    one()
                    predictor.predict(request)
                for _ in range(rounds):  # interleaved, so background load hits all alike
                    http += [timed(one) for _ in range(per_round)]
                    forward += [timed(lambda: predictor.predict(request))
                                for _ in range(per_round)]
                    echo += echo_round_trips(per_round, stack.redis_url,
                                             stack.tmp / "data")
        row = {
            "mode": mode, "jobs": len(http),
            "http_p50_s": pct(http, 0.5), "http_p99_s": pct(http, 0.99),
            "forward_p50_s": pct(forward, 0.5), "forward_p99_s": pct(forward, 0.99),
            "celery_p50_s": pct(echo, 0.5), "celery_p99_s": pct(echo, 0.99),
        }
        row["overhead_p50_s"] = row["http_p50_s"] - row["forward_p50_s"]
        row["overhead_vs_celery"] = row["overhead_p50_s"] / row["celery_p50_s"]
        row["target_overhead_s"] = 0.010 if mode == "redis" else 0.100
        row["meets_target"] = row["overhead_p50_s"] <= row["target_overhead_s"]
        rows.append(row)

    table = Table("mode", "HTTP p50 ms", "HTTP p99 ms", "forward p50 ms", "Celery echo p50 ms",
                  "overhead p50 ms", "overhead / echo", "target ms", "met",
                  title=f"latency: classify {entry.name}, one job at a time ({opts.device})")
    for r in rows:
        table.add_row(r["mode"], ms(r["http_p50_s"]), ms(r["http_p99_s"]),
                      ms(r["forward_p50_s"]), ms(r["celery_p50_s"]), ms(r["overhead_p50_s"]),
                      f"{r['overhead_vs_celery']:.2f}", ms(r["target_overhead_s"]),
                      "yes" if r["meets_target"] else "NO")
    console.print(table)
    result = {"scenario": "latency", "model": entry.name, "rows": rows}
    write(opts, "latency", result)
    return result
