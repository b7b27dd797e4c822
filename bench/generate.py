"""``convoy bench generate``: images per second of ``generate`` jobs against the same
sampling loop called in-process, same batch and steps."""

from __future__ import annotations

import statistics
import time
from typing import Any

from rich.table import Table

from bench.inprocess import device_of, load_catalog, load_predictor, requests_for
from bench.load import run_clients
from bench.report import BenchOptions, console, timed, write
from bench.stack import Stack
from bench.throughput import batch_counts

GENERATE_MODEL = "ddpm-digits"


def generate(opts: BenchOptions, steps: int = 20) -> dict[str, Any] | None:
    """Images/s of generate jobs (one image each) against ``predict`` on batches of the
    same size in-process. Twice ``max_batch`` clients keep the service saturated, as the
    direct loop is: while one batch runs, the next one waits."""
    catalog = load_catalog()
    name = opts.model or GENERATE_MODEL
    if name not in catalog.entries:
        console.print(f"generate: skipped, {name} is not in the catalog (its weights are not "
                      "trained: convoy train ddpm-digits)")
        return None
    entry = catalog.get(name)
    predictor = load_predictor(entry, device_of(opts.device))
    batch = entry.max_batch
    rounds = opts.n(10)
    label = entry.labels[0] if entry.labels else None

    def inp(i: int) -> dict[str, Any]:
        return {"n": 1, "seed": i, "steps": steps, "class_label": label}

    requests = requests_for("generate", [inp(i) for i in range(batch)], entry)

    def body(i: int) -> dict[str, Any]:
        return {"kind": "generate", "model": entry.name, "input": inp(i)}

    mode = opts.modes[-1]
    direct: list[float] = []
    served: list[float] = []
    with Stack(mode, opts.redis_url if mode == "redis" else None, device=opts.device,
               env={"CONVOY_PRELOAD": entry.name}) as stack:
        stack.start()
        predictor.predict(requests)
        run_clients(stack.url, batch, batch, body)  # warm
        time.sleep(1.5)  # the warm-up's batches reach /metrics with the next heartbeat
        before = batch_counts(stack.url)
        for _ in range(3):  # alternated, so that other load on the machine hits both alike
            t = timed(lambda: [predictor.predict(requests) for _ in range(rounds)])
            direct.append(rounds * batch / t)
            elapsed, lat = run_clients(stack.url, 2 * batch, rounds * batch, body)
            served.append(len(lat) / elapsed)
        time.sleep(1.5)
        after = batch_counts(stack.url)
        mean_batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    row = {"batch": batch, "steps": steps, "images": rounds * batch * 3,
           "service_images_per_s": statistics.mean(served),
           "direct_images_per_s": statistics.mean(direct), "mean_batch": mean_batch}
    row["vs_direct"] = row["service_images_per_s"] / row["direct_images_per_s"]
    row["meets_target"] = row["vs_direct"] >= 0.9
    table = Table("batch", "steps", "service images/s", "direct images/s", "mean batch",
                  "vs direct", "target", title=f"generate: {entry.name} ({mode}, {opts.device})")
    table.add_row(str(batch), str(steps), f"{row['service_images_per_s']:.2f}",
                  f"{row['direct_images_per_s']:.2f}", f"{mean_batch:.1f}",
                  f"{row['vs_direct']:.2f}", "0.9")
    console.print(table)
    result = {"scenario": "generate", "model": entry.name, "mode": mode, **row}
    write(opts, "generate", result)
    return result
