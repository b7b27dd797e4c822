"""Request limits: the body size (enforced while reading), a per-key token bucket, and the
event streams and waits a key may hold open at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import RateLimited


class BodyLimit:
    """ASGI middleware: answer 413 once a body passes ``max_bytes``, whether or not it
    declared a Content-Length (chunked bodies are counted as they arrive)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(send)
                return
        seen = 0
        too_large = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if too_large:  # the app caught the error and answered (FastAPI says 400): say 413
                if not response_started:
                    response_started = True
                    await self._too_large(send)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await self._too_large(send)
        except Exception:
            if too_large and not response_started:
                await self._too_large(send)
            else:
                raise

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"error": {"code": "payload_too_large", "message":
                                     f"the request body is over {self.max_bytes} bytes",
                                     "details": None}}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds to wait before the next request."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0

    def snapshot(self) -> dict[str, Any]:
        return {"keys": len(self._buckets)}


class OpenPerKey:
    """Event streams and ``Prefer: wait`` submissions open at once, per API key, up to
    ``limit``: past it, 429. Neither holds a thread or a store connection while it waits,
    but each holds a socket and a little memory, and one key must not take them all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> Callable[[], None]:
        """Count one more for ``key`` (RateLimited past the limit); returns the release,
        which may be called more than once."""
        with self._lock:
            if self._open.get(key, 0) >= self.limit:
                raise RateLimited(f"this key already has {self.limit} event streams and "
                                  "waits open", retry_after=5.0)
            self._open[key] = self._open.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._open.get(key, 1) - 1
                if left > 0:
                    self._open[key] = left
                else:
                    self._open.pop(key, None)

        return release

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        release = self.acquire(key)
        try:
            yield
        finally:
            release()

    def count(self, key: str) -> int:
        return self._open.get(key, 0)
