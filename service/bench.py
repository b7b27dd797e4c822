"""``convoy bench`` scenarios. Each measures the service and its own baseline side by side,
in one run, on this machine, prints a table and writes JSON.

- ``latency``: a classify job through HTTP with ``Prefer: wait``, against the model's own
  forward time (in-process) and a bare Celery round trip on the same broker, per mode.
- ``throughput``: classify jobs from 1, 8 and 64 concurrent clients, against the same
  model called in-process in batches of ``max_batch``, and with batching switched off.
- ``generate``: images per second of ``generate`` jobs against the same sampling loop
  called in-process, same batch and steps.
- ``trace``: the throughput model's forward, eager and traced, alone and beside threads
  running Python.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from service.bench_stack import (
    Stack,
    bench_redis_url,
    device_of,
    echo_round_trips,
    load_catalog,
    load_predictor,
    requests_for,
    run_clients,
    sample_images,
)

console = Console(width=None if sys.stdout.isatty() else 150)
LATENCY_MODEL = "lenet5-digits"
THROUGHPUT_MODELS = ("resnet18-shapes", "lenet5-digits")  # the first one present is used
GENERATE_MODEL = "ddpm-digits"


@dataclass
class BenchOptions:
    out: Path = Path("bench-out")
    device: str = "cpu"
    redis_url: str = "redis://127.0.0.1:6379/9"  # flushed by the bench
    modes: tuple[str, ...] = ("embedded", "redis")
    scale: float = 1.0  # multiplies the number of jobs of every scenario
    model: str | None = None


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _n(opts: BenchOptions, n: int) -> int:
    return max(4, int(n * opts.scale))


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _write(opts: BenchOptions, name: str, result: dict[str, Any]) -> Path:
    import torch

    opts.out.mkdir(parents=True, exist_ok=True)
    device = device_of(opts.device)
    result["machine"] = {
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_1m": os.getloadavg()[0],  # other work on the machine skews the figures
    }
    path = opts.out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {path} (load average {result['machine']['load_average_1m']:.1f} on "
                  f"{result['machine']['cpus']} CPUs)")
    return path


def _stack(opts: BenchOptions, mode: str, preload: str, **env: str) -> Stack:
    return Stack(mode, opts.redis_url if mode == "redis" else None, device=opts.device,
                 env={"CONVOY_PRELOAD": preload, **env})


# -- latency -----------------------------------------------------------------------------------
def latency(opts: BenchOptions) -> dict[str, Any]:
    """p50/p99 of one classify job at a time, against the forward pass and a Celery echo."""
    entry = load_catalog().get(opts.model or LATENCY_MODEL)
    predictor = load_predictor(entry, device_of(opts.device))
    image = sample_images(entry, 1)[0]
    body = {"kind": "classify", "model": entry.name, "input": {"image": image}}
    request = requests_for("classify", [{"image": image}], entry)
    rounds, per_round = 5, _n(opts, 40)
    rows = []
    for mode in opts.modes:
        with _stack(opts, mode, entry.name) as stack:
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
                    http += [_timed(one) for _ in range(per_round)]
                    forward += [_timed(lambda: predictor.predict(request))
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
    _write(opts, "latency", result)
    return result


# -- throughput --------------------------------------------------------------------------------
def _throughput_model(opts: BenchOptions) -> Any:
    catalog = load_catalog()
    for name in ((opts.model,) if opts.model else THROUGHPUT_MODELS):
        if name in catalog.entries:
            return catalog.get(name)
    raise SystemExit(f"none of {THROUGHPUT_MODELS} is in the catalog; train lenet5-digits")


def _direct_rate(predictor: Any, requests: list[Any], batch: int) -> float:
    """Images per second of ``predict`` over ``requests`` in batches of ``batch``."""
    predictor.predict(requests[:batch])  # warm
    t0 = time.perf_counter()
    for i in range(0, len(requests), batch):
        predictor.predict(requests[i:i + batch])
    return len(requests) / (time.perf_counter() - t0)


def throughput(opts: BenchOptions, levels: tuple[int, ...] = (1, 8, 64)) -> dict[str, Any]:
    """Jobs per second at each client count, against the model in-process, batched."""
    entry = _throughput_model(opts)
    predictor = load_predictor(entry, device_of(opts.device))
    images = sample_images(entry, 256)
    requests = requests_for("classify", [{"image": im} for im in images], entry)
    direct_n = max(entry.max_batch, _n(opts, 512) // entry.max_batch * entry.max_batch)
    direct_requests = [requests[i % len(requests)] for i in range(direct_n)]

    def body(i: int) -> dict[str, Any]:
        return {"kind": "classify", "model": entry.name, "input": {"image": images[i % 256]}}

    def jobs_for(clients: int) -> int:
        return _n(opts, max(100, 20 * clients))

    direct: list[float] = []
    rows = []
    mode = opts.modes[-1]
    for batching in (True, False):
        env = {} if batching else {"CONVOY_BATCHING": "false"}
        with _stack(opts, mode, entry.name, **env) as stack:
            stack.start()
            run_clients(stack.url, 8, 32, body)  # warm
            for clients in (levels if batching else levels[-1:]):
                direct.append(_direct_rate(predictor, direct_requests, entry.max_batch))
                batches, cpu = _batch_counts(stack.url), stack.cpu_seconds()
                elapsed, lat = run_clients(stack.url, clients, jobs_for(clients), body)
                used = {k: (v - cpu[k]) / len(lat) for k, v in stack.cpu_seconds().items()}
                time.sleep(1.5)  # the worker reports its batches with its next heartbeat
                after = _batch_counts(stack.url)
                rows.append({"batching": batching, "clients": clients, "jobs": len(lat),
                             "jobs_per_s": len(lat) / elapsed, "p50_s": pct(lat, 0.5),
                             "p99_s": pct(lat, 0.99), "cpu_s_per_job": used,
                             "mean_batch": (after[0] - batches[0]) / max(1.0, after[1] - batches[1])})
    direct.append(_direct_rate(predictor, direct_requests, entry.max_batch))
    direct_rate = statistics.median(direct)
    off = next(r for r in rows if not r["batching"])
    for r in rows:
        r["vs_direct"] = r["jobs_per_s"] / direct_rate
        r["vs_batching_off"] = r["jobs_per_s"] / off["jobs_per_s"]
    top = next(r for r in rows if r["batching"] and r["clients"] == levels[-1])
    verdict = {"vs_direct_target": 0.8, "vs_batching_off_target": 2.0,
               "meets_target": top["vs_direct"] >= 0.8 and top["vs_batching_off"] >= 2.0}

    parts = ("api", "workers", "client") + (("redis",) if mode == "redis" else ())
    table = Table("batching", "clients", "jobs", "jobs/s", "p50 ms", "p99 ms", "mean batch",
                  "CPU ms/job " + "+".join(p.replace("workers", "worker") for p in parts),
                  "vs direct", "vs batching off",
                  title=f"throughput: classify {entry.name} ({mode}, {opts.device}); direct "
                        f"in-process, batches of {entry.max_batch}: {direct_rate:.1f} images/s")
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
              "max_batch": entry.max_batch, "direct_images_per_s": direct_rate,
              "direct_runs": direct, "rows": rows, **verdict}
    _write(opts, "throughput", result)
    return result


def _batch_counts(url: str) -> tuple[float, float]:
    """(requests, batches) the workers report in /metrics so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("convoy_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("convoy_batch_size_count"):
            count += float(line.split()[-1])
    return total, count


# -- generate ----------------------------------------------------------------------------------
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
    rounds = _n(opts, 10)
    label = entry.labels[0] if entry.labels else None

    def inp(i: int) -> dict[str, Any]:
        return {"n": 1, "seed": i, "steps": steps, "class_label": label}

    requests = requests_for("generate", [inp(i) for i in range(batch)], entry)

    def body(i: int) -> dict[str, Any]:
        return {"kind": "generate", "model": entry.name, "input": inp(i)}

    mode = opts.modes[-1]
    direct: list[float] = []
    served: list[float] = []
    with _stack(opts, mode, entry.name) as stack:
        stack.start()
        predictor.predict(requests)
        run_clients(stack.url, batch, batch, body)  # warm
        time.sleep(1.5)  # the warm-up's batches reach /metrics with the next heartbeat
        before = _batch_counts(stack.url)
        for _ in range(3):  # alternated, so that other load on the machine hits both alike
            t = _timed(lambda: [predictor.predict(requests) for _ in range(rounds)])
            direct.append(rounds * batch / t)
            elapsed, lat = run_clients(stack.url, 2 * batch, rounds * batch, body)
            served.append(len(lat) / elapsed)
        time.sleep(1.5)
        after = _batch_counts(stack.url)
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
    _write(opts, "generate", result)
    return result


# -- trace -------------------------------------------------------------------------------------
def trace(opts: BenchOptions, batch: int = 20, busy_threads: int = 2) -> dict[str, Any]:
    """The throughput model's forward pass on a batch, eager and traced, alone and beside
    threads running Python (as a worker's job threads do): an eager forward takes the GIL
    back at every op, a traced one once."""
    import threading

    import torch

    from models.catalog import ModelEntry

    entry = _throughput_model(opts)
    device = device_of(opts.device)
    base = entry.model_dump(exclude={"trace", "source"})
    models = {name: load_predictor(ModelEntry(**base, trace=traced), device).model
              for name, traced in (("eager", False), ("traced", True))}
    spec = entry.input
    x = torch.rand(batch, spec.channels, spec.height, spec.width, device=device)
    runs = _n(opts, 30)

    def forward_ms(model: Any) -> float:
        with torch.inference_mode():
            model(x)
            times = [_timed(lambda: model(x)) for _ in range(runs)]
        return statistics.median(times) * 1000

    rows = []
    for company in (0, busy_threads):
        stop = threading.Event()
        threads = [threading.Thread(target=_spin, args=(stop,), daemon=True)
                   for _ in range(company)]
        for t in threads:
            t.start()
        try:
            row = {"busy_threads": company,
                   **{f"{name}_ms": forward_ms(m) for name, m in models.items()}}
        finally:
            stop.set()
            for t in threads:
                t.join()
        row["eager_vs_traced"] = row["eager_ms"] / row["traced_ms"]
        rows.append(row)
    table = Table("busy Python threads", "eager ms", "traced ms", "eager / traced",
                  title=f"trace: {entry.name} forward on {batch} images, median of {runs} "
                        f"({opts.device})")
    for r in rows:
        table.add_row(str(r["busy_threads"]), f"{r['eager_ms']:.1f}", f"{r['traced_ms']:.1f}",
                      f"{r['eager_vs_traced']:.2f}")
    console.print(table)
    result = {"scenario": "trace", "model": entry.name, "batch": batch, "rows": rows}
    _write(opts, "trace", result)
    return result


def _spin(stop: Any) -> None:
    """Run Python until ``stop`` is set (a busy job thread)."""
    while not stop.is_set():
        sum(range(200))


def sampler(opts: BenchOptions) -> Any:
    """The sampler benchmark of models/benchmarks (quality and speed per scheduler)."""
    try:
        from models.benchmarks import sampler as module
    except ImportError:
        console.print("sampler: skipped, models/benchmarks/sampler.py is not there yet")
        return None
    opts.out.mkdir(parents=True, exist_ok=True)
    return module.run(out_json=opts.out / "sampler.json")


def transfer(opts: BenchOptions) -> Any:
    """Transfer learning with few labels: linear probe, fine-tuning and training from
    scratch on tasks built here (models/benchmarks/transfer.py), on this process's CPU."""
    from models.benchmarks import transfer as module

    opts.out.mkdir(parents=True, exist_ok=True)
    result = module.run(out_json=opts.out / "transfer.json", work=opts.out / "transfer")
    console.print(module.table(result["tasks"]), markup=False)
    return result


SCENARIOS: dict[str, Callable[[BenchOptions], Any]] = {
    "latency": latency, "throughput": throughput, "generate": generate, "trace": trace,
    "sampler": sampler, "transfer": transfer,
}


def register(app: Any) -> None:
    """Add one command per scenario, and ``all``, to the ``convoy bench`` typer app."""
    def options(out: Path, device: str, redis_url: str | None, redis_db: int, modes: str,
                scale: float, model: str | None) -> BenchOptions:
        return BenchOptions(out=out, device=device, redis_url=bench_redis_url(redis_url, redis_db),
                            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                            scale=scale, model=model)

    def command(name: str, fn: Callable[[BenchOptions], Any], default_modes: str) -> None:
        def run(
            out: Annotated[Path, typer.Option(help="folder for the JSON results")] = Path("bench-out"),
            device: Annotated[str, typer.Option(help="cpu | cuda | auto")] = "cpu",
            redis_url: Annotated[str | None, typer.Option(
                help="Redis database the bench flushes (default: --redis-db on the server of "
                     "CONVOY_REDIS_URL, or the local one)")] = None,
            redis_db: Annotated[int, typer.Option(help="database number to flush and use")] = 9,
            modes: Annotated[str, typer.Option(help="embedded,redis (the last one is used by "
                                                    "single-mode scenarios)")] = default_modes,
            scale: Annotated[float, typer.Option(help="multiplies the number of jobs")] = 1.0,
            model: Annotated[str | None, typer.Option(help="another catalog model")] = None,
            threads: Annotated[int | None, typer.Option(help="torch CPU threads of this "
                                                        "process")] = None,
        ) -> None:
            if threads:
                import torch

                torch.set_num_threads(threads)
            fn(options(out, device, redis_url, redis_db, modes, scale, model))

        run.__doc__ = fn.__doc__
        app.command(name)(run)

    command("latency", latency, "embedded,redis")
    command("throughput", throughput, "redis")
    from service.bench_arrivals import register_generate  # it builds on this module

    register_generate(app, options)
    command("trace", trace, "redis")
    command("sampler", sampler, "redis")
    command("transfer", transfer, "embedded")

    def run_all(opts: BenchOptions) -> None:
        """Every scenario, one after the other."""
        for name, fn in SCENARIOS.items():
            console.rule(name)
            fn(BenchOptions(**{**vars(opts), "model": None}))

    command("all", run_all, "embedded,redis")
