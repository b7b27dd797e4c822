"""Pieces of ``convoy bench`` that decide what it touches and what it counts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bench.load import run_clients
from bench.report import pct
from bench.stack import bench_redis_url


def test_the_bench_never_flushes_the_services_own_redis_database(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVOY_REDIS_URL", "redis://cache.internal:6380/0")
    assert bench_redis_url(None, 9) == "redis://cache.internal:6380/9"
    monkeypatch.delenv("CONVOY_REDIS_URL")
    assert bench_redis_url(None, 9) == "redis://127.0.0.1:6379/9"
    assert bench_redis_url("redis://elsewhere:6379/4", 9) == "redis://elsewhere:6379/4"


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 0.5) in (50.0, 51.0)
    assert pct(values, 0.99) == 99.0 and pct([3.0], 0.99) == 3.0


class _Jobs(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections, as the service has them
    seen: ClassVar[list[dict]] = []
    status = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Prefer"] == "wait=60"
        _Jobs.seen.append(body)
        reply = json.dumps({"id": str(len(_Jobs.seen)), "status": "succeeded"}).encode()
        self.send_response(_Jobs.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def jobs_server() -> Iterator[str]:
    _Jobs.seen, _Jobs.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_the_load_generator_sends_every_job_once_and_times_each(jobs_server: str) -> None:
    elapsed, latencies = run_clients(jobs_server, 4, 30, lambda i: {"n": i})
    assert sorted(b["n"] for b in _Jobs.seen) == list(range(30))
    assert len(latencies) == 30 and 0 < max(latencies) <= elapsed


def test_the_load_generator_stops_at_a_job_that_did_not_succeed(jobs_server: str) -> None:
    _Jobs.status = 503
    with pytest.raises(RuntimeError, match="did not succeed: 503"):
        run_clients(jobs_server, 2, 5, lambda i: {"n": i})


def test_the_trace_scenario_times_both_forwards_alone_and_in_company(tmp_path: Path) -> None:
    from bench.report import BenchOptions
    from bench.trace import trace

    result = trace(BenchOptions(out=tmp_path, scale=0.1, model="lenet5-digits"), batch=4)
    assert [r["busy_threads"] for r in result["rows"]] == [0, 2]
    for row in result["rows"]:
        assert row["eager_ms"] > 0 and row["traced_ms"] > 0
        assert row["eager_vs_traced"] == row["eager_ms"] / row["traced_ms"]
    assert (tmp_path / "trace.json").exists()
