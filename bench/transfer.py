"""``convoy bench transfer``: transfer learning with few labels (linear probe, fine-tuning
and training from scratch) on tasks built by ``models/benchmarks/transfer.py``."""

from __future__ import annotations

from typing import Any

from bench.report import BenchOptions, console


def transfer(opts: BenchOptions) -> Any:
    """Transfer learning with few labels: linear probe, fine-tuning and training from
    scratch on tasks built here (models/benchmarks/transfer.py), on this process's CPU."""
    from models.benchmarks import transfer as module

    opts.out.mkdir(parents=True, exist_ok=True)
    result = module.run(out_json=opts.out / "transfer.json", work=opts.out / "transfer")
    console.print(module.table(result["tasks"]), markup=False)
    return result
