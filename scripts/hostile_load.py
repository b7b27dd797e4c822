"""Hostile requests against a real API and worker: what they cost and whether others wait.

Starts ``convoy serve`` (API and one worker, embedded mode) in a temporary data dir, sends
``--concurrent`` requests of one hostile kind at once while probing ``/healthz`` every 50
ms, and prints the answers' statuses, the ``/healthz`` latencies and the peak RSS (VmHWM)
of the API and the worker:

    python scripts/hostile_load.py decode     # 1 KB lossless WebPs declaring 4096x4096
    python scripts/hostile_load.py decode --ids   # the same with client-chosen job ids
    python scripts/hostile_load.py keys       # bodies of 500 000 unknown keys
    CONVOY_INPUT_SCALE=0 python scripts/hostile_load.py decode   # the decode budget alone
    CONVOY_REDIS_URL=redis://127.0.0.1:6379/5 python scripts/hostile_load.py streams

``streams`` runs the API alone (jobs stay queued): one key opens ``--streams`` event
streams on its job, then another key sends ``--concurrent`` submissions and reads them
back, 8 at a time; it prints their statuses and latencies, the API's threads and (Redis
mode) the Redis connections of its database before and with the streams open.
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


def bodies(kind: str, n: int, model: str, ids: bool) -> list[bytes]:
    if kind == "decode":
        image = webp_4096()
        job_kind = "segment" if model.startswith("unet") else "classify"
        return [json.dumps({"kind": job_kind, "model": model, "input": {"image": image},
                            **({"id": f"hostile-{i}"} if ids else {})}).encode()
                for i in range(n)]
    keys = {f"k{i}": i for i in range(500_000)}
    return [json.dumps({"kind": "classify", "model": model, "input": keys}).encode()
            for _ in range(n)]


ALICE, BOB = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}


def open_stream(port: int, job_id: str) -> tuple[socket.socket, int]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n"
                 "Authorization: Bearer ka\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1]) if head else 0


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def redis_connections() -> int | None:
    url = os.environ.get("CONVOY_REDIS_URL")
    if not url:
        return None
    import redis

    client = redis.Redis.from_url(url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    try:
        return sum(1 for c in client.client_list() if int(c["db"]) == db) - 1
    finally:
        client.close()


def streams(url: str, port: int, pid: int, n_streams: int, n_requests: int) -> dict[str, object]:
    with httpx.Client(base_url=url, headers=ALICE, timeout=60) as c:
        job = {"kind": "sample", "model": "dcgan-digits", "input": {}}
        job_id = c.post("/v1/jobs", json=job).json()["id"]
    connections_before, threads_before = redis_connections(), threads(pid)
    opened = [open_stream(port, job_id) for _ in range(n_streams)]
    time.sleep(2.0)
    connections_open, threads_open = redis_connections(), threads(pid)
    statuses: list[int] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def one(count: int) -> None:
        with httpx.Client(base_url=url, headers=BOB, timeout=60) as c:
            for _ in range(count):
                for method, path in (("POST", "/v1/jobs"), ("GET", None)):
                    t0 = time.perf_counter()
                    try:
                        if method == "POST":
                            r = c.post("/v1/jobs", json={"kind": "sample",
                                                         "model": "dcgan-digits", "input": {}})
                            job_id = r.json().get("id")
                        elif job_id:
                            r = c.get(f"/v1/jobs/{job_id}")
                        else:
                            continue
                        code = r.status_code
                    except httpx.HTTPError:
                        code = 0
                    with lock:
                        statuses.append(code)
                        latencies.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=one, args=(n_requests // 8,)) for _ in range(8)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for sock, _ in opened:
        sock.close()
    lat = sorted(latencies)
    return {
        "streams": n_streams,
        "stream statuses": {str(s): [c for _, c in opened].count(s)
                            for s in sorted({c for _, c in opened})},
        "other key's statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "other key's p50 ms": round(statistics.median(lat) * 1000, 1),
        "other key's max ms": round(lat[-1] * 1000, 1),
        "API threads": [threads_before, threads_open],
        "Redis connections": [connections_before, connections_open],
    }


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
    parser.add_argument("kind", choices=["decode", "keys", "streams"])
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--streams", type=int, default=130)
    parser.add_argument("--ids", action="store_true", help="decode: client-chosen job ids")
    parser.add_argument("--model", default="unet-shapes")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="convoy-hostile-"))
    env = {**os.environ, "CONVOY_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(ROOT),
           "CONVOY_API_KEYS": "alice:ka,bob:kb"}
    if os.environ.get("CONVOY_REDIS_URL"):
        import redis

        redis.Redis.from_url(os.environ["CONVOY_REDIS_URL"]).flushdb()
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115
    extra = ["--no-worker"] if args.kind == "streams" else []
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                             *extra], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2)
                if ready.status_code == 200 or (extra and ready.json()["checks"]["store"] == "ok"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit(f"the service did not come up: {(tmp / 'serve.log').read_text()}")
        if args.kind == "streams":
            print(json.dumps(streams(url, port, proc.pid, args.streams, args.concurrent)))
            return
        worker = worker_pid(proc.pid)
        payloads = bodies(args.kind, args.concurrent, args.model, args.ids)
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
            with httpx.Client(base_url=url, headers=ALICE, timeout=120) as c:
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
