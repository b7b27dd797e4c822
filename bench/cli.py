"""The ``convoy bench`` commands: one per scenario of ``SCENARIOS``, each with the options
every scenario shares (``--out``, ``--device``, ``--redis-url``/``--redis-db``, ``--modes``,
``--scale``, ``--model``, ``--threads``) and the options of its own.

A scenario is a function ``fn(opts: BenchOptions, **own)``. Its own options are the keyword
parameters annotated for typer, ``steps: Annotated[int, typer.Option(help=...)] = 20``;
parameters without such an annotation keep their defaults. A new scenario is its module
and one line in ``SCENARIOS``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.arrivals import generate_jobs
from bench.latency import latency
from bench.peers.scenario import peers
from bench.report import BenchOptions, console
from bench.sampler import sampler
from bench.stack import bench_redis_url
from bench.throughput import throughput
from bench.trace import trace
from bench.transfer import transfer

# name: (scenario, the modes it runs in unless --modes says otherwise)
SCENARIOS: dict[str, tuple[Callable[..., Any], str]] = {
    "latency": (latency, "embedded,redis"),
    "throughput": (throughput, "redis"),
    "generate": (generate_jobs, "redis"),
    "trace": (trace, "redis"),
    "sampler": (sampler, "redis"),
    "transfer": (transfer, "embedded"),
    "peers": (peers, "redis"),
}
ALL = ("latency", "throughput", "generate", "trace", "sampler", "transfer")  # `convoy bench all`


def _common(default_modes: str) -> list[inspect.Parameter]:
    """The options every scenario takes, as parameters of its command."""
    def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=annotation)

    return [
        option("out", Annotated[Path, typer.Option(help="folder for the JSON results")],
               Path("bench-out")),
        option("device", Annotated[str, typer.Option(help="cpu | cuda | auto")], "cpu"),
        option("redis_url", Annotated[str | None, typer.Option(
            help="Redis database the bench flushes (default: --redis-db on the server of "
                 "CONVOY_REDIS_URL, or the local one)")], None),
        option("redis_db", Annotated[int, typer.Option(help="database number to flush and use")],
               9),
        option("modes", Annotated[str, typer.Option(
            help="embedded,redis (the last one is used by single-mode scenarios)")],
               default_modes),
        option("scale", Annotated[float, typer.Option(help="multiplies the number of jobs")], 1.0),
        option("model", Annotated[str | None, typer.Option(help="another catalog model")], None),
        option("threads", Annotated[int | None, typer.Option(
            help="torch CPU threads of this process")], None),
    ]


def _own(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """The scenario's keyword parameters that carry a typer annotation."""
    hints = typing.get_type_hints(fn, include_extras=True)
    own = []
    for param in list(inspect.signature(fn).parameters.values())[1:]:
        hint = hints.get(param.name)
        if any(isinstance(m, typer.models.ParameterInfo)
               for m in getattr(hint, "__metadata__", ())):
            own.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hint))
    return own


def options(out: Path, device: str, redis_url: str | None, redis_db: int, modes: str,
            scale: float, model: str | None) -> BenchOptions:
    return BenchOptions(out=out, device=device, redis_url=bench_redis_url(redis_url, redis_db),
                        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                        scale=scale, model=model)


def command(app: typer.Typer, name: str, fn: Callable[..., Any], default_modes: str) -> None:
    """Add ``fn`` to ``app`` as the command ``name``."""
    common, own = _common(default_modes), _own(fn)

    def run(**values: Any) -> None:
        shared = {p.name: values.pop(p.name) for p in common}
        threads = shared.pop("threads")
        if threads:
            import torch

            torch.set_num_threads(threads)
        fn(options(**shared), **values)

    run.__signature__ = inspect.Signature(common + own)  # type: ignore[attr-defined]
    run.__doc__ = fn.__doc__
    app.command(name)(run)


def run_all(opts: BenchOptions) -> None:
    """Every scenario but peers, one after the other."""
    for name in ALL:
        console.rule(name)
        SCENARIOS[name][0](BenchOptions(**{**vars(opts), "model": None}))


def register(app: typer.Typer) -> None:
    """One command per scenario, and ``all``, on the ``convoy bench`` typer app."""
    for name, (fn, modes) in SCENARIOS.items():
        command(app, name, fn, modes)
    command(app, "all", run_all, "embedded,redis")
