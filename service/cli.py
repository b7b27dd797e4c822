"""The ``convoy`` command line: serve, worker, submit, models, train, bench, convert."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.bench import register as _register_bench

app = typer.Typer(help="convoy: a job service for convolutional models.", no_args_is_help=True,
                  add_completion=False)
bench_app = typer.Typer(help="Benchmarks, each printing ratios measured side by side.")
app.add_typer(bench_app, name="bench")
_register_bench(bench_app)
console = Console()
URL = typer.Option("http://127.0.0.1:8000", envvar="CONVOY_URL", help="the service's address")
KEY = typer.Option(None, envvar="CONVOY_API_KEY", help="API key, if the server has keys")


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="CONVOY_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CONVOY_PORT")] = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="API only")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="public bind without keys")] = False,
) -> None:
    """Start the API (and, unless --no-worker, one worker process beside it)."""
    import uvicorn

    from service.app import create_app
    from workers.settings import Settings, UnsafeSettings

    _logging()
    settings = Settings(insecure=True) if insecure else Settings()
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
    worker = None
    if not no_worker:
        worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"],
                                  preexec_fn=_die_with_parent)
    sys.setswitchinterval(settings.switch_interval_s)  # as the worker does
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                    timeout_graceful_shutdown=5)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


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


def _die_with_parent() -> None:
    """In the worker child: get SIGTERM when `convoy serve` dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _client(url: str, key: str | None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30, read=120))


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


@app.command()
def submit(
    kind: str,
    model: Annotated[str, typer.Option("--model", "-m")],
    image: Annotated[Path | None, typer.Option(help="an image file")] = None,
    mask: Annotated[
        Path | None, typer.Option(help="inpainting mask file (white = repaint), image's size")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="key=value (JSON values)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job to its end")] = False,
    out: Annotated[Path | None, typer.Option(help="save the artifacts here")] = None,
    url: str = URL,
    key: str | None = KEY,
) -> None:
    """Submit a job; with --wait follow its events with a progress bar and save artifacts."""
    from service.client import follow, save_artifacts

    body_input: dict[str, Any] = {}
    if image is not None:
        body_input["image"] = base64.b64encode(image.read_bytes()).decode()
    if mask is not None:
        body_input["mask"] = base64.b64encode(mask.read_bytes()).decode()
    for item in set_ or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        body_input[k] = _parse_value(v)
    with _client(url, key) as client:
        r = client.post("/v1/jobs", json={"kind": kind, "model": model, "input": body_input})
        if r.status_code >= 400:
            console.print(f"[red]{r.status_code}[/red] {r.text}")
            raise typer.Exit(1)
        job = r.json()
        console.print(f"job {job['id']} {job['status']}")
        if wait or out:
            job = follow(client, job["id"])
            console.print_json(json.dumps({k: job[k] for k in ("status", "output", "error")}))
        if out and job["status"] == "succeeded":
            for path in save_artifacts(client, job, out):
                console.print(f"saved {path}")
        if job["status"] in ("failed", "canceled"):
            raise typer.Exit(1)


@app.command("models")
def models_cmd(url: str = URL, key: str | None = KEY) -> None:
    """List the service's models."""
    with _client(url, key) as client:
        r = client.get("/v1/models")
        r.raise_for_status()
    table = Table("name", "kinds", "family", "input", "metrics")
    for m in r.json()["models"]:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in m["metrics"].items()
                            if isinstance(v, int | float) and not isinstance(v, bool))
        inp = m["input"]
        table.add_row(m["name"], ",".join(m["kinds"]), m["family"],
                      f"{inp['channels']}x{inp['height']}x{inp['width']}", metrics)
    console.print(table)


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
    app()


if __name__ == "__main__":
    main()
