"""LitServe serving the peers model: one inference worker on the CPU, batches of up to 32
within 10 ms, everything else at LitServe's defaults.

Run as ``python -m bench.peers.litserve_server PORT CATALOG PIDS``: PIDS is a folder where
the inference worker leaves a file named for its process id (the CPU columns tell the
inference worker from the API server by it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls

from bench.peers.model import MAX_BATCH, MAX_WAIT_S, Model


class Classify(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, catalog: Path, pids: Path) -> None:
        super().__init__(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_S)
        self.catalog, self.pids = catalog, pids

    def setup(self, device: str) -> None:
        self.model = Model(self.catalog)
        (self.pids / f"worker-{os.getpid()}").touch()

    def decode_request(self, request, **kwargs: Any) -> str:  # type: ignore[no-untyped-def]
        # unannotated: LitServe reads the JSON body into it (an annotation would make
        # LitServe build a request model of its own from it)
        return str(request["image"])

    def batch(self, inputs: list[str]) -> list[str]:
        return inputs

    def predict(self, images: list[str], **kwargs: Any) -> list[Any]:
        return self.model.classify(images)

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output


def main(port: int, catalog: Path, pids: Path) -> None:
    server = ls.LitServer(Classify(catalog, pids), accelerator="cpu")
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
