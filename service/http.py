"""Read timeouts for uvicorn's HTTP protocol: a request's headers, then its body, must arrive
within a time (``HEADER_TIMEOUT_S``, ``BODY_TIMEOUT_S``).

uvicorn times out only idle keep-alive connections: a client that connects and sends nothing,
or sends a header or a body one byte every few seconds, holds its connection (and, for a
body, the request's task) for as long as it likes; two hundred such clients cost the server
sockets and memory without ever being refused. Routes check the key before they read a
body, so a client without one is answered 401 without waiting for its body at all.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # uvicorn without httptools: its h11 protocol
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _ReadTimeouts:
    """Mixed into a uvicorn protocol (httptools or h11: both keep ``cycle``)."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._read_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: Any = None
        self._arm(self.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:  # a new request's headers
            self._timed_cycle = cycle
            self._disarm()
            if cycle.more_body:
                self._arm(self.body_timeout_s, self._body_late)
        elif cycle is not None and not cycle.more_body and self._read_timer is not None \
                and cycle is self._timed_cycle and not cycle.response_complete:
            self._disarm()  # the body is in
        elif (cycle is None or cycle.response_complete) and self._read_timer is None:
            self._arm(self.header_timeout_s, self._headers_late)  # the next request begins

    def _arm(self, delay: float, handler: Any) -> None:
        self._disarm()
        if delay > 0:
            self._read_timer = self.loop.call_later(delay, handler)

    def _disarm(self) -> None:
        if getattr(self, "_read_timer", None) is not None:
            self._read_timer.cancel()  # type: ignore[union-attr]
            self._read_timer = None

    def _headers_late(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._close_with_408("the request's headers did not arrive in time")

    def _body_late(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body:
            return
        if not cycle.response_started:
            cycle.response_started = True  # the app's own answer, if any, goes nowhere
            self._close_with_408("the request's body did not arrive in time")
        else:
            self.transport.close()
        cycle.disconnected = True
        cycle.message_event.set()

    def _close_with_408(self, message: str) -> None:
        if self.transport.is_closing():
            return
        body = json.dumps({"error": {"code": "timeout", "message": message,
                                     "details": None}}).encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json"
                             b"\r\nconnection: close\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()


def timed_protocol(header_timeout_s: float, body_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools where installed) with the read timeouts."""
    base = HttpToolsProtocol or H11Protocol
    return type("TimedHttpProtocol", (_ReadTimeouts, base), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})
