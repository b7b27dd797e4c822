"""The model in-process, as a worker holds it: the catalog, the device, the predictor
loaded through the worker's model cache, sample images, and predictor requests prepared as
the service prepares them. The baselines every scenario measures the service against."""

from __future__ import annotations

import base64
import functools
import io
import time
from dataclasses import dataclass
from typing import Any


def load_catalog() -> Any:
    from models.catalog import Catalog
    from workers.settings import Settings

    return Catalog.load(Settings().catalog)


def device_of(name: str) -> Any:
    from workers.worker import resolve_device

    return resolve_device(name)


def load_predictor(entry: Any, device: Any) -> Any:
    """The entry's predictor, loaded the way a worker loads it (thread count included)."""
    import torch

    from workers.cache import ModelCache
    from workers.settings import Settings
    from workers.worker import cpu_threads

    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(Settings()))  # as a worker does
    return ModelCache(device).get(entry)


def sample_images(entry: Any, n: int) -> list[str]:
    """``n`` base64 PNGs fit for the entry's input: held-out digits or shapes samples."""
    from models.images import to_pil

    if entry.input.channels == 1:
        from models.data.digits import load_digits_split

        x = load_digits_split(32)[2]
    else:
        from models.data.shapes import make_classification

        x = make_classification(min(n, 256), seed=7)[0]
    out = []
    for i in range(n):
        buf = io.BytesIO()
        to_pil(x[i % len(x)]).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


@functools.cache
def _job_schema() -> Any:
    """The submission schema (built once: building it takes longer than a batch runs)."""
    from pydantic import TypeAdapter

    from workers.contract import JobRequest

    return TypeAdapter(JobRequest)


def requests_for(kind: str, inputs: list[dict[str, Any]], entry: Any) -> list[Any]:
    """Predictor requests from job inputs, validated and prepared as the service does."""
    from models.predictor import Request
    from workers.contract import check, prepare

    schema = _job_schema()
    out = []
    for raw in inputs:
        body = schema.validate_python({"kind": kind, "model": entry.name, "input": raw})
        data = check(kind, body.input.model_dump(), entry, 1 << 30)
        out.append(Request(kind, prepare(kind, data, entry, 1 << 30)))
    return out


@dataclass(frozen=True)
class Direct:
    """The model in-process on batches: the baseline of the throughput scenarios."""

    images_per_s: float
    cpu_s_per_image: float  # CPU time of this process (all its threads) per image


def direct_rate(predictor: Any, requests: list[Any], batch: int) -> Direct:
    """``predict`` over ``requests`` in batches of ``batch``, after one warm batch."""
    predictor.predict(requests[:batch])
    t0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(requests), batch):
        predictor.predict(requests[i:i + batch])
    cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    return Direct(len(requests) / elapsed, cpu / len(requests))
