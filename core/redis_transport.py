"""kombu's Redis transport, keeping one client per channel for its plain commands, and
setting malformed messages aside.

The stock channel builds a new ``redis.Redis`` object for every publish and every ack;
the client objects are thread-safe views of the same connection pool, so one is kept
(and rebuilt only when the channel replaces its pool after a connection error).

A queue entry that is not a message (see ``core.dead_letters``) is pushed onto the
capped ``convoy:dead`` list instead of being handed to Celery.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from kombu.transport import redis
from kombu.utils.encoding import bytes_to_str

from core.dead_letters import DEAD_KEEP, DEAD_LIST, MalformedMessage, read_message, report


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

    def _checked(self, raw: bytes, queue: str) -> dict[str, Any] | None:
        """The message of a queue entry, or None for one set aside."""
        try:
            return read_message(raw)
        except MalformedMessage as why:
            report(f"queue {queue}", why, raw)
            with self.conn_or_acquire() as client:
                pipe = client.pipeline()
                pipe.lpush(DEAD_LIST, raw)
                pipe.ltrim(DEAD_LIST, 0, DEAD_KEEP - 1)
                pipe.execute()
            return None

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, with the entry checked before it is delivered
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._checked(item, dest)
            if payload is None:
                raise Empty()
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: str) -> Any:
        # kombu's own, with each entry checked
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while item := client.rpop(self._q_for_pri(queue, pri)):
                    payload = self._checked(item, queue)
                    if payload is not None:
                        self._maybe_update_queues_expire(client, queue)
                        return payload
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class Transport(redis.Transport):
    Channel = Channel
