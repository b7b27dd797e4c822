"""A webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that records every
request and answers as the test tells it (a status, a delay, or down)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    status: int = 200
    delay_s: float = 0.0
    reply: bytes = b"ok"
    requests: list[Received] = field(default_factory=list)
    answered: list[Received] = field(default_factory=list)  # those given a 2xx answer
    server: ThreadingHTTPServer | None = None
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                got = Received(self.path, dict(self.headers.items()), body, time.time())
                with receiver._lock:
                    receiver.requests.append(got)
                    status, delay = receiver.status, receiver.delay_s
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(receiver.reply)))
                    self.end_headers()
                    self.wfile.write(receiver.reply)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the sender gave up (a timeout) or died: not answered
                if 200 <= status < 300:
                    with receiver._lock:
                        receiver.answered.append(got)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until ``start`` again (same port)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ids(self) -> Counter[str]:
        with self._lock:
            return Counter(r.headers.get("webhook-id", "") for r in self.requests)

    def delivered_ids(self) -> Counter[str]:
        with self._lock:
            return Counter(r.headers.get("webhook-id", "") for r in self.answered)

    def figures(self, name: str) -> str:
        """One FIGURES line: requests received, ids given a 2xx, and repeated ids."""
        ids, answered = self.ids(), self.delivered_ids()
        line = (f"FIGURES {name}: attempted={sum(ids.values())} delivered_ids={len(answered)} "
                f"duplicates={sum(ids.values()) - len(ids)} "
                f"delivered_twice={sum(n - 1 for n in answered.values())}")
        print(line)
        return line

    def wait_for(self, pred: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError(f"receiver: condition not met; got {self.ids()}")
