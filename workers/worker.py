"""Worker processes: ``convoy worker`` runs one per device; ``--gpus`` starts and supervises
one child per GPU with ``CUDA_VISIBLE_DEVICES`` set, never touching CUDA in the parent."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from workers.settings import Settings

log = logging.getLogger(__name__)


def resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"device {device} asked for, but CUDA is not available here")
    return dev


def device_memory(device: Any) -> int | None:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def run_worker(settings: Settings, queues: list[str] | None = None,
               concurrency: int | None = None) -> None:
    """Run one worker process on ``settings.device`` until SIGTERM/SIGINT (warm shutdown)."""
    import torch

    from models.catalog import Catalog
    from workers.cache import ModelCache, parse_budget
    from workers.celery_app import make_celery
    from workers.runtime import WorkerRuntime
    from workers.store import open_store
    from workers.tasks import register

    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    import warnings

    from celery.exceptions import SecurityWarning

    from models.registry import list_models

    warnings.filterwarnings("ignore", category=SecurityWarning)  # containers run as root
    settings.load_plugins()
    list_models()  # import every family now, not on the first job
    store = open_store(settings)
    if settings.redis_url:
        from workers.startup import check_redis

        check_redis(settings.redis_url)
    catalog = Catalog.load(settings.catalog)
    cache = ModelCache(device, parse_budget(settings.memory_budget, device_memory(device)))
    app = make_celery(settings)
    runtime = WorkerRuntime(settings, store, catalog, cache, celery=app)
    register(app, runtime)
    for name in settings.preload:
        cache.get(catalog.get(name))
    if queues is None:
        queues = sorted({e.queue for e in catalog})
    runtime.beat()
    runtime.start_supervision()
    log.info("worker %s on %s, queues %s", runtime.id, device, queues)
    worker = app.Worker(
        pool="threads",
        concurrency=concurrency or settings.worker_concurrency,
        queues=queues,
        hostname=f"{runtime.id}@convoy",
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        quiet=True,
    )
    try:
        worker.start()
    finally:
        runtime.stop()


def spawn_per_gpu(gpus: list[str], argv: list[str], restart: bool = True) -> int:
    """Start one ``convoy worker`` child per GPU id and restart any that dies.

    ``argv`` is the child's command line; the parent never imports torch.
    """
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def start(gpu: str) -> None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "CONVOY_DEVICE": "cuda:0"}
        children[gpu] = subprocess.Popen(argv, env=env)
        log.info("started worker for GPU %s (pid %d)", gpu, children[gpu].pid)

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for gpu in gpus:
        start(gpu)
    while children:
        time.sleep(0.5)
        for gpu, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[gpu]
            if not stopping and restart:
                log.warning("worker for GPU %s exited with %s; restarting", gpu, code)
                start(gpu)
    return 0


def list_gpus(spec: str) -> list[str]:
    """'all' → every visible GPU (asked of nvidia-smi, so CUDA stays untouched here); '0,1' → those."""
    if spec != "all":
        return [g.strip() for g in spec.split(",") if g.strip()]
    fake = os.environ.get("CONVOY_FAKE_GPUS")  # tests: a device count without GPUs
    if fake is not None:
        return [str(i) for i in range(int(fake))]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        print("no GPUs found (nvidia-smi failed); use --device cpu", file=sys.stderr)
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]
