"""What every scenario shares: its options, quantiles, and how results are printed and
written (a table on the console, JSON with the machine's description)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class BenchOptions:
    out: Path = Path("bench-out")
    device: str = "cpu"
    redis_url: str = "redis://127.0.0.1:6379/9"  # flushed by the bench
    modes: tuple[str, ...] = ("embedded", "redis")
    scale: float = 1.0  # multiplies the number of jobs of every scenario
    model: str | None = None

    def n(self, count: int) -> int:
        """``count`` jobs scaled by ``--scale``, at least 4."""
        return max(4, int(count * self.scale))


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write(opts: BenchOptions, name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` as ``<out>/<name>.json``, with the machine it ran on."""
    import torch

    from bench.inprocess import device_of

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
