"""kombu's Redis transport, keeping one client per channel for its plain commands.

The stock channel builds a new ``redis.Redis`` object for every publish and every ack;
the client objects are thread-safe views of the same connection pool, so one is kept
(and rebuilt only when the channel replaces its pool after a connection error).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _plain_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._plain_client
        if client is None or client.connection_pool is not pool:
            client = self._plain_client = super()._create_client(asynchronous=False)
        return client


class Transport(redis.Transport):
    Channel = Channel
