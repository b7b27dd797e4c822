"""The ``convoy`` command line: serve, worker, train, convert, bench here; the client
commands (submit, models, jobs ...) in ``service/cli_client.py``. Every failure a user can
cause (an unreachable server, an error answer, a missing file) ends in one line on stderr
and exit status 1, never a traceback."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench.cli import register as _register_bench
from service.cli_client import UsageError
from service.cli_client import register as _register_client
from service.client import ConvoyClientError

app = typer.Typer(help="convoy: a job service for convolutional models.", no_args_is_help=True,
                  add_completion=False)
bench_app = typer.Typer(help="Benchmarks, each printing ratios measured side by side.")
app.add_typer(bench_app, name="bench")
_register_bench(bench_app)
_register_client(app)
console = Console()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convoy")
    except PackageNotFoundError:
        return "unknown"


@app.callback(invoke_without_command=True)
def _root(
    show_version: Annotated[bool, typer.Option(
        "--version", help="print the version and exit", is_eager=True)] = False,
) -> None:
    if show_version:
        typer.echo(f"convoy {_version()}")
        raise typer.Exit()


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="CONVOY_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CONVOY_PORT")] = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="API only")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="public bind without keys")] = False,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="API processes on the port (for hosts with many cores)")] = 1,
) -> None:
    """Start the API (and, unless --no-worker, one worker process beside it)."""
    import uvicorn

    from service.app import create_app
    from service.http import timed_protocol
    from workers.settings import Settings, UnsafeSettings

    _logging()
    if insecure:  # the environment carries it to API processes that uvicorn spawns
        os.environ["CONVOY_INSECURE"] = "true"
    settings = Settings()
    try:
        settings.check_bind(host)
    except UnsafeSettings as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if not settings.keys():
        console.print(f"No API keys configured: serving without authentication on {host} "
                      "(loopback only unless --insecure).")
    mode = "embedded (SQLite + local broker under " + str(settings.data_dir) + ")" \
        if settings.embedded else "distributed (Redis)"
    console.print(f"convoy on http://{host}:{port} — {mode}")
    app = create_app(settings) if workers == 1 else None
    worker = None
    if not no_worker and importlib.util.find_spec("torch") is None:
        console.print("No worker: this install has no torch (pip install 'convoy[worker]'); "
                      "serving the API alone.", markup=False)
        no_worker = True
    if not no_worker:  # supervised: a worker that dies is started again
        from service.supervisor import WorkerChild

        worker = WorkerChild([sys.executable, "-m", "service.cli", "worker"],
                             max_delay_s=settings.worker_restart_max_s)
        if app is not None:
            app.state.worker_child = worker
        worker.start()
    sys.setswitchinterval(settings.switch_interval_s)  # as the worker does
    try:
        if app is not None:
            uvicorn.run(app, host=host, port=port, log_level="warning",
                        timeout_graceful_shutdown=5,
                        http=timed_protocol(settings.header_timeout_s, settings.body_timeout_s))
        else:  # uvicorn spawns the processes, which import the app and protocol by name
            uvicorn.run("service.cli:api_process_app", factory=True, workers=workers,
                        host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                        http="service.cli:TimedProtocol")
    finally:
        if worker is not None:
            worker.stop(signal.SIGTERM)


def api_process_app() -> Any:
    """The app of one of ``serve --workers N``'s API processes, from the environment's
    settings (each process has its own store connections and finish subscription)."""
    from service.app import create_app
    from workers.settings import Settings

    settings = Settings()
    sys.setswitchinterval(settings.switch_interval_s)
    return create_app(settings)


def __getattr__(name: str) -> Any:
    """``TimedProtocol``: the HTTP protocol with the read timeouts of the environment's
    settings, for the API processes uvicorn spawns (they import it by name)."""
    if name != "TimedProtocol":
        raise AttributeError(name)
    from service.http import timed_protocol
    from workers.settings import Settings

    settings = Settings()
    return timed_protocol(settings.header_timeout_s, settings.body_timeout_s)


@app.command()
def worker(
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda:N")] = None,
    gpus: Annotated[str | None, typer.Option(help="all | 0,1,...: one child per GPU")] = None,
    queues: Annotated[str | None, typer.Option(help="comma-separated (default: all in catalog)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="jobs taken at once")] = None,
) -> None:
    """Run a worker process (or, with --gpus, one supervised child per GPU)."""
    from workers.settings import Settings
    from workers.worker import list_gpus, run_worker, spawn_per_gpu

    _logging(os.environ.get("CONVOY_LOG_LEVEL", "INFO"))
    if os.environ.get("CONVOY_PARENT_PID"):  # the worker of `convoy serve`
        _die_with_parent(int(os.environ["CONVOY_PARENT_PID"]))
    if gpus:
        ids = list_gpus(gpus)
        if not ids:
            raise typer.Exit(2)
        argv = [sys.executable, "-m", "service.cli", "worker"]
        if queues:
            argv += ["--queues", queues]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        raise typer.Exit(spawn_per_gpu(ids, argv))
    settings = Settings(device=device) if device else Settings()
    run_worker(settings, queues.split(",") if queues else None, concurrency)


def _die_with_parent(parent: int) -> None:
    """In the worker child: get SIGTERM when `convoy serve` dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:  # it died before the request took effect
        raise typer.Exit(0)


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="a built-in model, or 'all'")],
    out: Annotated[Path | None, typer.Option(help="folder for weights + sidecar")] = None,
    seed: int = 0,
    quick: Annotated[bool, typer.Option(help="a few steps only (smoke test)")] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Train a built-in model and write its safetensors weights and metrics sidecar."""
    from models.registry import list_trainers
    from models.training import train as run

    names = list_trainers() if name == "all" else [name]
    for n in names:
        metrics = run(n, out, seed=seed, quick=quick, threads=threads)
        console.print(f"[bold]{n}[/bold]: {json.dumps(metrics)}")


@app.command()
def convert(src: Path, dst: Path) -> None:
    """Convert a torchvision .pth state dict you trust into safetensors (tensors only)."""
    from models.convert import convert_pth

    convert_pth(src, dst)
    console.print(f"wrote {dst}")


def main() -> None:
    try:
        app()
    except (ConvoyClientError, UsageError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
