"""The service CPU of ``convoy bench peers``' convoy stack, per job, by process and thread.

Starts convoy in Redis mode on the peers' model (as the bench does), warms it, then runs
64 closed-loop clients for ``--seconds`` and reads each thread's user + system CPU from
``/proc/<pid>/task/<tid>/stat`` before and after. Python does not give its threads OS
names, so the names come from a short ``py-spy record --threads`` of the same processes
(``pip install py-spy``; without it, threads are listed by id).

    python scripts/cpu_by_thread.py --redis-url redis://127.0.0.1:6379/9   # the database is flushed
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inprocess import sample_images
from bench.load import run_clients
from bench.peers.contenders import Convoy
from bench.peers.model import ENTRY, write_catalog
from bench.processes import session_pids
from models.catalog import Catalog

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pids: list[int]) -> dict[int, float]:
    """Thread id → CPU seconds (user + system) so far."""
    out = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def thread_names(pids: list[int], work: Path) -> dict[int, str]:
    """Thread id → Python thread name (pool threads' numbers dropped), from py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {}
    names: dict[int, str] = {}
    for pid in pids:
        out = work / f"spy-{pid}.txt"
        subprocess.run([spy, "record", "-p", str(pid), "-d", "2", "--threads", "--idle", "--nonblocking",
                        "-f", "raw", "-o", str(out)], capture_output=True, check=False)
        for line in out.read_text().splitlines() if out.exists() else []:
            if m := re.match(r"thread \((\d+)\): ([^;]*)", line):
                names[int(m.group(1))] = re.sub(r"_\d+$", "_N", m.group(2))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convoy-cpu-"))
    catalog = write_catalog(work / "model")
    images = sample_images(Catalog.load([catalog], builtin=False).get(ENTRY), 256)
    convoy = Convoy()
    convoy.start(work, catalog, args.redis_url)
    try:
        def run(clients: int, jobs: int) -> None:
            run_clients(convoy.url, clients, jobs, lambda i: convoy.body(images[i % 256]),
                        path=convoy.path, headers=convoy.headers, ok=convoy.ok)

        run(8, 64)  # warm
        part = {pid: "api" for pid in session_pids(convoy.stack.api.pid)}
        part.update({p.pid: "worker" for p in convoy.stack.processes.procs
                     if p is not convoy.stack.api})
        pids = list(part)
        redis_before, before, start, jobs = convoy.cpu()["redis"], thread_cpu(pids), time.time(), 0
        while time.time() - start < args.seconds:
            run(64, 640)
            jobs += 640
        after, redis_after = thread_cpu(pids), convoy.cpu()["redis"]
        owner = {int(tid): part[pid] for pid in pids for tid in os.listdir(f"/proc/{pid}/task")}
        names = thread_names(pids, work)
        by: collections.Counter[tuple[str, str]] = collections.Counter()
        for tid, seconds in after.items():
            by[(owner.get(tid, "?"), names.get(tid, f"thread {tid}"))] += seconds - before.get(tid, 0.0)
        print(f"{jobs} jobs in {time.time() - start:.1f} s; CPU ms per job:")
        for (process, name), seconds in by.most_common():
            if seconds * 1000 / jobs >= 0.005:
                print(f"  {process:6s} {name:32s} {seconds * 1000 / jobs:6.2f}")
        print(f"  redis  {'the whole server':32s} {(redis_after - redis_before) * 1000 / jobs:6.2f}")
    finally:
        convoy.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
