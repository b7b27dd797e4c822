"""Ray Serve serving the peers model: one replica on the CPU, ``@serve.batch`` with up to
32 requests within 10 ms, everything else at Ray's defaults (a local Ray of two CPUs,
without its dashboard, on a small object store).

Run as ``python -m bench.peers.ray_server PORT CATALOG``; it serves ``POST /predict`` until
it gets SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

from bench.peers.model import MAX_BATCH, MAX_WAIT_S, Model


@serve.deployment(num_replicas=1, max_ongoing_requests=256)
class Classify:
    def __init__(self, catalog: str) -> None:
        self.model = Model(Path(catalog))

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=MAX_WAIT_S)
    async def classify(self, images: list[str]) -> list[Any]:
        return self.model.classify(images)

    async def __call__(self, request: Request) -> Any:
        body = await request.json()
        return await self.classify(body["image"])


def main(port: int, catalog: Path) -> None:
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Classify.bind(str(catalog)), route_prefix="/predict")  # type: ignore[attr-defined]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
