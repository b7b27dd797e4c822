"""Hostile requests against a real API and worker: what they cost and whether others wait.

Starts ``convoy serve`` (API and one worker, embedded mode) in a temporary data dir, sends
``--concurrent`` requests of one hostile kind at once while probing ``/healthz`` every 50
ms, and prints the answers' statuses, the ``/healthz`` latencies and the peak RSS (VmHWM)
of the API and the worker:

    python scripts/hostile_load.py decode     # 1 KB lossless WebPs declaring 4096x4096
    python scripts/hostile_load.py keys       # bodies of 500 000 unknown keys
    CONVOY_INPUT_SCALE=0 python scripts/hostile_load.py decode   # the decode budget alone

Extra ``CONVOY_*`` variables in the environment reach the service.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def webp_4096() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4096, 4096), (40, 90, 200)).save(buf, "WEBP", lossless=True)
    return base64.b64encode(buf.getvalue()).decode()


def bodies(kind: str, n: int, model: str) -> list[bytes]:
    if kind == "decode":
        image = webp_4096()
        job_kind = "segment" if model.startswith("unet") else "classify"
        return [json.dumps({"kind": job_kind, "model": model, "input": {"image": image}}).encode()
                for _ in range(n)]
    keys = {f"k{i}": i for i in range(500_000)}
    return [json.dumps({"kind": "classify", "model": model, "input": keys}).encode()
            for _ in range(n)]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pid(api_pid: int) -> int | None:
    for child in Path(f"/proc/{api_pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            return int(pid)
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["decode", "keys"])
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--model", default="unet-shapes")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="convoy-hostile-"))
    env = {**os.environ, "CONVOY_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(ROOT)}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit(f"the service did not come up: {(tmp / 'serve.log').read_text()}")
        worker = worker_pid(proc.pid)
        payloads = bodies(args.kind, args.concurrent, args.model)
        api_before = peak_rss_mb(proc.pid)
        worker_before = peak_rss_mb(worker) if worker else 0.0
        latencies: list[float] = []
        statuses: list[int] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                while not done.is_set():
                    t0 = time.perf_counter()
                    c.get("/healthz")
                    latencies.append(time.perf_counter() - t0)
                    time.sleep(0.05)

        def send(body: bytes) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                r = c.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
                statuses.append(r.status_code)

        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        senders = [threading.Thread(target=send, args=(b,)) for b in payloads]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        answered = time.perf_counter() - t0
        time.sleep(20 if args.kind == "decode" else 1)  # the worker runs what was accepted
        done.set()
        prober.join()
        lat = sorted(latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(json.dumps({
            "kind": args.kind, "model": args.model, "concurrent": args.concurrent,
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "all answered in s": round(answered, 2),
            "healthz p50 ms": round(statistics.median(lat) * 1000, 1),
            "healthz p99 ms": round(p99 * 1000, 1), "healthz max ms": round(lat[-1] * 1000, 1),
            "API peak RSS MB": [round(api_before), round(peak_rss_mb(proc.pid))],
            "worker peak RSS MB": [round(worker_before),
                                   round(peak_rss_mb(worker)) if worker else None],
        }))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
