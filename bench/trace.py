"""``convoy bench trace``: the throughput model's forward, eager and traced, alone and
beside threads running Python."""

from __future__ import annotations

import statistics
from typing import Any

from rich.table import Table

from bench.inprocess import device_of, load_predictor
from bench.report import BenchOptions, console, timed, write
from bench.throughput import throughput_model


# -- trace -------------------------------------------------------------------------------------
def trace(opts: BenchOptions, batch: int = 20, busy_threads: int = 2) -> dict[str, Any]:
    """The throughput model's forward pass on a batch, eager and traced, alone and beside
    threads running Python (as a worker's job threads do): an eager forward takes the GIL
    back at every op, a traced one once."""
    import threading

    import torch

    from models.catalog import ModelEntry

    entry = throughput_model(opts)
    device = device_of(opts.device)
    base = entry.model_dump(exclude={"trace", "source"})
    models = {name: load_predictor(ModelEntry(**base, trace=traced), device).model
              for name, traced in (("eager", False), ("traced", True))}
    spec = entry.input
    x = torch.rand(batch, spec.channels, spec.height, spec.width, device=device)
    runs = opts.n(30)

    def forward_ms(model: Any) -> float:
        with torch.inference_mode():
            model(x)
            times = [timed(lambda: model(x)) for _ in range(runs)]
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
    write(opts, "trace", result)
    return result


def _spin(stop: Any) -> None:
    """Run Python until ``stop`` is set (a busy job thread)."""
    while not stop.is_set():
        sum(range(200))
