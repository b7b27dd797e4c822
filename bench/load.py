"""The HTTP load generator: closed-loop clients on kept-alive connections, each sending its
next request when the answer to the last one is in."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


def convoy_succeeded(status: int, body: bytes) -> bool:
    """A convoy job answered with its end (``Prefer: wait``) and succeeded."""
    return status == 200 and json.loads(body)["status"] == "succeeded"


def run_clients(url: str, clients: int, jobs: int, body_for: Callable[[int], dict[str, Any]],
                path: str = "/v1/jobs", headers: dict[str, str] | None = None,
                ok: Callable[[int, bytes], bool] = convoy_succeeded,
                ) -> tuple[float, list[float]]:
    """Send ``jobs`` POSTs of ``body_for(i)`` (JSON) to ``path`` from ``clients`` concurrent
    clients; return (elapsed seconds, per-request latencies). The default is a convoy job
    that waits for its end with ``Prefer: wait``; an answer ``ok`` refuses stops the run.

    The clients speak plain HTTP/1.1 on kept-alive connections: a general-purpose client
    would spend more CPU per request than the service does, on the same cores.
    """
    if headers is None:
        headers = {"Prefer": "wait=60"}
    return asyncio.run(_clients(url, clients, jobs, body_for, path, headers, ok))


async def _clients(url: str, clients: int, jobs: int, body_for: Callable[[int], dict[str, Any]],
                   path: str, headers: dict[str, str], ok: Callable[[int, bytes], bool]
                   ) -> tuple[float, list[float]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [_request(host, path, headers, json.dumps(body_for(i)).encode())
                for i in range(jobs)]
    latencies: list[float] = []
    next_job = 0

    async def one_client() -> None:
        nonlocal next_job
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_job < jobs:
                request = requests[next_job]
                next_job += 1
                t0 = time.perf_counter()
                writer.write(request)
                status, body = await _response(reader)
                if not ok(status, body):
                    raise RuntimeError(f"job did not succeed: {status} {body[:300]!r}")
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return time.perf_counter() - start, latencies


def _request(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readline()).split()[1])
    length = None
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        return status, await _chunks(reader)
    if length is None:
        raise RuntimeError("a response without Content-Length")
    return status, await reader.readexactly(length)


async def _chunks(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (some servers stream even a small JSON answer)."""
    body = b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()  # the blank line after the last chunk (no trailers)
            return body
        body += await reader.readexactly(size)
        await reader.readline()
