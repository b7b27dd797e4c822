"""How many jobs a worker takes at once, and how many threads torch gets."""

from __future__ import annotations

import os

from core.settings import Settings
from models.catalog import Catalog, ModelEntry
from workers.worker import cpu_threads, job_threads


def catalog() -> Catalog:
    entries = [ModelEntry(name="big", family="f", kinds=["classify"], max_batch=64),
               ModelEntry(name="small", family="f", kinds=["classify"], max_batch=4),
               ModelEntry(name="gpu", family="f", kinds=["generate"], max_batch=16, queue="gpu")]
    return Catalog({e.name: e for e in entries})


def test_a_worker_takes_enough_jobs_to_fill_the_largest_batch_it_serves() -> None:
    settings = Settings(worker_concurrency=0, batching=True)
    assert job_threads(settings, catalog(), ["convoy"]) == 64
    assert job_threads(settings, catalog(), ["gpu"]) == 16
    assert job_threads(settings, catalog(), ["other"]) == 8  # never fewer than 8
    off = Settings(worker_concurrency=0, batching=False)
    assert job_threads(off, catalog(), ["convoy"]) == 8
    assert job_threads(Settings(worker_concurrency=3), catalog(), ["convoy"]) == 3


def test_torch_gets_half_the_cores_unless_told() -> None:
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(Settings(torch_threads=0)) == max(1, cores // 2)
    assert cpu_threads(Settings(torch_threads=5)) == 5
