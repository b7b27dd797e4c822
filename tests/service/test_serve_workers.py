"""``convoy serve --workers N``: N API processes share the port."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from bench.processes import Processes, cmdline, family_pids, free_port, stop
from tests.fixtures import ROOT


def test_two_api_processes_share_the_port_and_accept_jobs(tmp_path: Path) -> None:
    from workers.contract import EXAMPLE_IMAGE

    port = free_port()
    env = {**os.environ, "CONVOY_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    for name in ("CONVOY_REDIS_URL", "CONVOY_API_KEYS", "CONVOY_API_KEYS_FILE"):
        env.pop(name, None)
    procs = Processes(tmp_path, env, cwd=ROOT)
    api = procs.spawn("api", ["-m", "service.cli", "serve", "--no-worker", "--workers", "2",
                              "--port", str(port)], new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200,
                         "the API", timeout=90, watch=True, errors=(httpx.HTTPError,))
        servers = [pid for pid in family_pids(api.pid)
                   if "spawn_main" in cmdline(pid)]
        assert len(servers) == 2, (servers, procs.tail())
        body = {"kind": "classify", "model": "lenet5-digits", "input": {"image": EXAMPLE_IMAGE}}
        seen = set()
        for _ in range(20):  # fresh connections: the kernel spreads them over both
            with httpx.Client(base_url=url, timeout=30) as client:
                r = client.post("/v1/jobs", json=body)
                assert r.status_code == 202, r.text
                seen.add(r.json()["id"])
        assert len(seen) == 20
    finally:
        stop(api, timeout=10)
