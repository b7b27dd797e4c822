"""Worker processes: ``convoy worker`` runs one per device; ``--gpus`` starts and supervises
one child per GPU with ``CUDA_VISIBLE_DEVICES`` set, never touching CUDA in the parent."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from core.contract import FINETUNE_QUEUE
from core.settings import Settings

if TYPE_CHECKING:
    from models.catalog import Catalog

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


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def cpu_threads(settings: Settings) -> int:
    """Torch's intra-op threads on a CPU worker. Half the cores by default: the job threads,
    the broker, the store (and in embedded mode the API) need the rest, and a parallel
    region whose threads wait for a busy core runs slower than one thread would."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    return max(1, _cores() // 2)


def lone_threads(settings: Settings) -> int | None:
    """Torch's threads for a lone request on a CPU worker (a batch of one with nothing
    waiting behind it): every core by default — the rest of the service has nothing to do
    while it runs, so a ResNet-18 forward takes ~6 ms instead of ~11 on two cores. None
    where CONVOY_TORCH_THREADS fixes the count."""
    return None if settings.torch_threads > 0 else _cores()


def job_threads(settings: Settings, catalog: Catalog, queues: list[str]) -> int:
    """Jobs a worker takes at once: enough to fill the largest batch of a model it serves
    (a batch can only group jobs the worker has taken)."""
    if settings.worker_concurrency > 0:
        return settings.worker_concurrency
    if queues == [FINETUNE_QUEUE]:  # one training run per device: take one job at a time
        return 1
    batches = [e.max_batch for e in catalog if e.queue in queues] if settings.batching else []
    return max([8, *batches])


def run_worker(settings: Settings, queues: list[str] | None = None,
               concurrency: int | None = None) -> None:
    """Run one worker process on ``settings.device`` until SIGTERM/SIGINT (warm shutdown)."""
    import torch

    from core.celery_app import make_celery
    from core.images import DECODE_BUDGET
    from core.queue_eta import QueueReporter
    from core.store import open_store
    from models.catalog import Catalog
    from workers.cache import ModelCache, parse_budget
    from workers.runtime import WorkerRuntime
    from workers.tasks import register
    from workers.webhooks import WebhookSender

    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(settings))
    # A shorter interval lets an eager forward take the GIL back sooner after each op, and
    # makes a Python-heavy one (a diffusers sampling loop) give it up more often: Python's
    # default served both kinds best here (see docs/performance.md).
    sys.setswitchinterval(settings.switch_interval_s)
    import warnings

    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)  # containers run as root
    settings.load_plugins()
    DECODE_BUDGET.configure(settings.decode_budget_pixels, None)  # job threads wait their turn
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
        queues = sorted({e.queue for e in catalog} | {FINETUNE_QUEUE})
    runtime.queues = list(queues)
    runtime.beat()
    runtime.start_supervision()
    webhooks = WebhookSender(settings, store)
    webhooks.start()
    if runtime.order is not None:
        QueueReporter(store, runtime.order, settings.queue_events_s, runtime.id).start(
            runtime._stop)
    log.info("worker %s on %s, queues %s", runtime.id, device, queues)
    worker = app.Worker(
        pool="threads",
        concurrency=concurrency or job_threads(settings, catalog, queues),
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
        webhooks.stop()
        runtime.stop()


STABLE_S = 30.0  # a child that ran this long before it died is restarted at once


def spawn_per_gpu(gpus: list[str], argv: list[str], restart: bool = True,
                  poll_s: float = 0.5) -> int:
    """Start one ``convoy worker`` child per GPU id and restart any that dies (at once if it
    had run for a while, else after a delay that doubles up to 30 s, so that a child that
    cannot start does not spin). SIGTERM/SIGINT pass to the children; returns when they end.

    ``argv`` is the child's command line; the parent never imports torch.
    """
    children: dict[str, subprocess.Popen[bytes]] = {}
    started: dict[str, float] = {}
    quick_exits = dict.fromkeys(gpus, 0)
    due: dict[str, float] = {}  # restarts waiting for their time
    stopping: int | None = None  # the signal that asked us to stop
    told: set[int] = set()  # pids of children that got it

    def start(gpu: str) -> None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "CONVOY_DEVICE": "cuda:0"}
        children[gpu] = subprocess.Popen(argv, env=env)
        started[gpu] = time.monotonic()
        log.info("started worker for GPU %s (pid %d)", gpu, children[gpu].pid)

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = signum
        pass_on()

    def pass_on() -> None:
        for child in list(children.values()):
            if stopping is not None and child.pid not in told:
                told.add(child.pid)
                child.send_signal(stopping)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for gpu in gpus:
        start(gpu)
    while children or (due and stopping is None):
        time.sleep(poll_s)
        pass_on()  # also to a child started while the signal came in
        now = time.monotonic()
        for gpu, child in list(children.items()):
            code = child.poll()
            if code is None:
                continue
            del children[gpu]
            if stopping is not None or not restart:
                continue
            quick_exits[gpu] = quick_exits[gpu] + 1 if now - started[gpu] < STABLE_S else 0
            delay = min(30.0, 0.5 * 2 ** (quick_exits[gpu] - 1)) if quick_exits[gpu] else 0.0
            log.warning("worker for GPU %s exited with %s; restarting in %.1f s", gpu, code, delay)
            due[gpu] = now + delay
        for gpu, at in list(due.items()):
            if at <= now and stopping is None:
                del due[gpu]
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
