"""``convoy bench sampler``: the sampler benchmark of ``models/benchmarks`` (quality and
speed of ``ddpm-digits`` per scheduler and step count, and of ``dcgan-digits``)."""

from __future__ import annotations

from typing import Any

from bench.report import BenchOptions


def sampler(opts: BenchOptions) -> Any:
    """Quality and speed per scheduler (models/benchmarks/sampler.py)."""
    from models.benchmarks import sampler as module

    opts.out.mkdir(parents=True, exist_ok=True)
    return module.run(out_json=opts.out / "sampler.json")
