"""``convoy bench peers``: convoy against LitServe, Ray Serve and the plain FastAPI + Celery
template, one at a time, on the same model and payloads (``bench.peers.model``), at 1 and 64
closed-loop clients, each relative to the model in-process on batches of 32, measured
between the contenders of the same run.

The CPU columns are the service's own CPU per job: what its processes used (from /proc)
during the 64-client run, per job, less what the model costs per image in-process (the
direct run's CPU per image) in the worker part. The load generator's CPU is apart.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bench.inprocess import direct_rate, load_predictor, requests_for, sample_images
from bench.load import run_clients
from bench.peers.contenders import Contender, available
from bench.peers.model import ENTRY, MAX_BATCH, write_catalog
from bench.report import BenchOptions, console, ms, pct, write

LEVELS = (1, 64)


def peers(opts: BenchOptions, contenders: Annotated[str | None, typer.Option(
        help="comma-separated: convoy, convoy-2 (two API processes), litserve, ray, celery "
             "(default: all whose packages are importable)")] = None) -> dict[str, Any]:
    """convoy against LitServe, Ray Serve and FastAPI + Celery: throughput at 1 and 64
    clients and p50/p99, relative to the model in-process; service CPU per job by part."""
    import torch

    from models.catalog import Catalog

    work = Path(tempfile.mkdtemp(prefix="convoy-bench-peers-"))
    try:
        catalog = write_catalog(work / "model")
        entry = Catalog.load([catalog], builtin=False).get(ENTRY)
        predictor = load_predictor(entry, torch.device("cpu"))
        images = sample_images(entry, 256)
        requests = requests_for("classify", [{"image": im} for im in images], entry)
        direct_requests = [requests[i % len(requests)]
                           for i in range(max(MAX_BATCH, opts.n(512) // MAX_BATCH * MAX_BATCH))]
        names = tuple(c.strip() for c in contenders.split(",")) if contenders else None
        directs: list[Any] = []
        rows = []
        for contender in available(names):
            console.print(f"peers: {contender.name}")
            rows.append(_measure(contender, opts, work / contender.name.replace(" ", "-"),
                                 catalog, images,
                                 lambda: directs.append(direct_rate(predictor, direct_requests,
                                                                    MAX_BATCH))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = statistics.median(d.images_per_s for d in directs)
    model_cpu = statistics.median(d.cpu_s_per_image for d in directs)
    for row in rows:
        for level in row["levels"].values():
            level["vs_direct"] = level["jobs_per_s"] / rate
        top = row["levels"][str(LEVELS[-1])]
        cpu = dict(top["cpu_s_per_job"])
        cpu["worker"] = cpu["worker"] - model_cpu  # beyond the model
        row["service_cpu_s_per_job"] = {k: v for k, v in cpu.items() if k != "client"}
        row["service_cpu_s_per_job"]["total"] = sum(row["service_cpu_s_per_job"].values())
    _table(rows, rate, model_cpu)
    result = {"scenario": "peers", "model": "torchvision resnet18, 4 classes, 64x64 PNG",
              "max_batch": MAX_BATCH, "direct_images_per_s": rate,
              "direct_cpu_s_per_image": model_cpu,
              "direct_runs": [vars(d) for d in directs], "rows": rows}
    write(opts, "peers", result)
    return result


def _measure(contender: Contender, opts: BenchOptions, work: Path, catalog: Path,
             images: list[str], direct: Any) -> dict[str, Any]:
    """The contender at each client count, the direct run before each."""
    work.mkdir(parents=True)
    contender.start(work, catalog, opts.redis_url)
    try:
        def run(clients: int, jobs: int) -> tuple[float, list[float]]:
            return run_clients(contender.url, clients, jobs,
                               lambda i: contender.body(images[i % len(images)]),
                               path=contender.path, headers=contender.headers, ok=contender.ok)

        run(8, 64)  # warm: connections, batch shapes, every worker child's model
        levels = {}
        for clients in LEVELS:
            direct()
            jobs = opts.n(100 if clients == 1 else 10 * clients)
            cpu, own = contender.cpu(), os.times()
            elapsed, lat = run(clients, jobs)
            after, own_after = contender.cpu(), os.times()
            used = {k: (after[k] - cpu[k]) / jobs for k in cpu}
            used["client"] = (own_after.user + own_after.system - own.user - own.system) / jobs
            levels[str(clients)] = {"clients": clients, "jobs": jobs, "jobs_per_s": jobs / elapsed,
                                    "p50_s": pct(lat, 0.5), "p99_s": pct(lat, 0.99),
                                    "cpu_s_per_job": used}
        direct()
    finally:
        contender.stop()
    return {"contender": contender.name, "levels": levels}


def _table(rows: list[dict[str, Any]], rate: float, model_cpu: float) -> None:
    low, high = (str(n) for n in LEVELS)
    table = Table("contender", f"{low} client: jobs/s", "vs direct", "p50 ms", "p99 ms",
                  f"{high} clients: jobs/s", "vs direct", "p50 ms", "p99 ms",
                  f"service CPU ms/job at {high}", "by part",
                  title=f"peers: torchvision ResNet-18 (4 classes), 64x64 PNG, one per request, "
                        f"batches of {MAX_BATCH} / 10 ms; direct in-process, batches of "
                        f"{MAX_BATCH}: {rate:.1f} images/s, {model_cpu * 1000:.2f} ms CPU/image")
    for row in rows:
        a, b = row["levels"][low], row["levels"][high]
        cpu = row["service_cpu_s_per_job"]
        parts = " + ".join(f"{k} {v * 1000:.2f}" for k, v in cpu.items() if k != "total")
        table.add_row(row["contender"], f"{a['jobs_per_s']:.1f}", f"{a['vs_direct']:.2f}",
                      ms(a["p50_s"]), ms(a["p99_s"]), f"{b['jobs_per_s']:.1f}",
                      f"{b['vs_direct']:.2f}", ms(b["p50_s"]), ms(b["p99_s"]),
                      f"{cpu['total'] * 1000:.2f}", parts)
    console.print(table)
