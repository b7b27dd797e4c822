"""The plain FastAPI + Celery template serving the peers model: a FastAPI endpoint that
sends one Celery task per request and waits for its result, a Celery worker at its
defaults (prefork, one child per core) that runs one image per task; Redis is broker and
result backend. No batching: the template has none.

Run as ``python -m bench.peers.celery_baseline api PORT`` or ``... worker``; both read the
Redis URL from ``BENCH_BROKER`` and the catalog from ``BENCH_CATALOG``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from celery import Celery

from bench.peers.model import Model

broker = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/9")
celery = Celery("peers", broker=broker, backend=broker)
_model: Model | None = None  # loaded by each worker child at its first task


@celery.task(name="peers.classify")
def classify(image: str) -> Any:
    global _model
    if _model is None:
        _model = Model(Path(os.environ["BENCH_CATALOG"]))
    return _model.classify([image])[0]


def api(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> Any:
        return classify.delay(body["image"]).get(timeout=60)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def worker() -> None:
    celery.worker_main(["worker", "--loglevel", "WARNING", "--without-heartbeat",
                        "--without-mingle", "--without-gossip"])


if __name__ == "__main__":
    if sys.argv[1] == "api":
        api(int(sys.argv[2]))
    else:
        worker()
