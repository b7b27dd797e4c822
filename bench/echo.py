"""A bare Celery round trip on the service's broker, with no convoy code in the path.

Run as ``python -m bench.echo`` it is the echo worker: a Celery worker with one trivial
task that sends its argument back on a reply queue; ``echo_round_trips`` times tasks sent
to it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

ECHO_TASK = "convoy.bench.echo"
ECHO_QUEUE = "convoy-bench-echo"


def echo_round_trips(n: int, redis_url: str | None, data_dir: Path) -> list[float]:
    """Seconds per round trip of a trivial task to the echo worker and its reply back, on
    the broker of the given mode."""
    from workers.celery_app import make_celery
    from workers.settings import Settings

    app = make_celery(Settings(redis_url=redis_url, data_dir=data_dir))
    reply = f"convoy-bench-reply-{os.getpid()}"
    times: list[float] = []
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(reply)
        try:
            for i in range(n + 3):
                t0 = time.perf_counter()
                app.send_task(ECHO_TASK, args=[reply, i], queue=ECHO_QUEUE)
                message = queue.get(timeout=30)
                message.ack()
                if message.payload != i:
                    raise RuntimeError(f"echo answered {message.payload!r}, expected {i}")
                if i >= 3:  # the first few warm the connections
                    times.append(time.perf_counter() - t0)
        finally:
            queue.close()
    return times


def echo_worker() -> None:
    """A Celery worker with one task that puts its argument on a reply queue."""
    from workers.celery_app import make_celery
    from workers.settings import Settings

    app = make_celery(Settings())
    conn = app.connection_for_write()
    queues: dict[str, Any] = {}  # one reply queue per bench process, declared once

    @app.task(name=ECHO_TASK, ignore_result=True)
    def echo(reply: str, value: Any) -> None:
        if reply not in queues:
            queues[reply] = conn.SimpleQueue(reply)
        queues[reply].put(value)

    app.Worker(pool="threads", concurrency=1, queues=[ECHO_QUEUE], loglevel="WARNING",
               without_heartbeat=True, without_mingle=True, without_gossip=True,
               quiet=True).start()


if __name__ == "__main__":
    echo_worker()
