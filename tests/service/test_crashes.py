"""A worker's crash or stall against real processes: a SIGKILL charges an attempt only to the
jobs that were on the device, not to those the worker merely held; a worker frozen past the
dead-worker timeout writes nothing once its jobs have run elsewhere.

The repeated-SIGKILL test prints a ``FIGURES`` line (run with ``-s``). Redis database 13
(``fresh_service``).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest

from tests.fixtures import Service, wait_status
from tests.helpers import parse_sse
from tests.service.test_faults import (
    DONE,
    artifact_names,
    blobs_of,
    duplicates,
    effects,
    sleepy,
    store_of,
)
from workers.blobs import artifact_key

pytestmark = pytest.mark.slow
KILL_MODES = os.environ.get("CONVOY_SIGKILL_MODES", "redis").split(",")


def _records(c: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    return [c.get(f"/v1/jobs/{j}").json() for j in ids]


def _wait(ok: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("fresh_service", ["embedded", "redis"], indirect=True)
def test_a_crash_charges_only_the_jobs_on_the_device(fresh_service: Service) -> None:
    svc = fresh_service
    store = store_of(svc)
    svc.start_worker(True, "--concurrency", "8")  # takes 8 jobs; sleepy runs 4 at a time
    with svc.client() as c:
        ids = [c.post("/v1/jobs", json=sleepy(50)).json()["id"] for _ in range(8)]

        def some_held_behind_a_running_batch() -> bool:
            jobs = _records(c, ids)
            return (all(j["status"] == "running" for j in jobs)
                    and any((j.get("progress") or {}).get("step", 0) >= 2 for j in jobs)
                    and any(not j.get("progress") for j in jobs))

        _wait(some_held_behind_a_running_batch, "the worker never held jobs behind a batch")
        svc.kill_workers(signal.SIGKILL)
        at_kill = [j for j in map(store.get, ids) if j is not None]
        stepped = {j.id for j in at_kill if j.progress}
        # the runs that reached the device, as the store recorded them before the kill
        ran = {j.id for j in at_kill if j.device and j.device == j.token}
        svc.start_worker()
        finished = [wait_status(c, j, DONE, timeout=300) for j in ids]
    assert stepped and stepped <= ran and len(ran) < len(ids)
    assert [j["status"] for j in finished] == ["succeeded"] * 8
    attempts = {j["id"]: j["attempts"] for j in finished}
    assert {attempts[j] for j in ran} == {2}  # lost on the device: charged
    assert {attempts[j] for j in set(ids) - ran} == {1}  # merely held: not charged


@pytest.mark.parametrize("fresh_service", KILL_MODES, indirect=True)
def test_three_sigkills_with_30_queued_fail_no_job(fresh_service: Service) -> None:
    """30 jobs queued, a worker taking up to 64 at once, SIGKILLed three times about 12 s
    apart and restarted each time: every job ends succeeded, none twice. (Over a minute and
    a half per mode: Redis mode in the suite, both with CONVOY_SIGKILL_MODES=embedded,redis.)"""
    svc = fresh_service
    store = store_of(svc)
    kills = 0
    with svc.client() as c:
        ids = [c.post("/v1/jobs", json=sleepy(100)).json()["id"] for _ in range(30)]
        svc.start_worker(True, "--concurrency", "64")
        for _ in range(3):
            time.sleep(12)
            if all(j["status"] in DONE for j in _records(c, ids)):
                break
            svc.kill_workers(signal.SIGKILL)
            kills += 1
            svc.start_worker()
        finished = [wait_status(c, j, DONE, timeout=600) for j in ids]
        dups = sum(duplicates(effects(c, store, j, blobs_of(svc)), 1) for j in ids)
    counts = {s: sum(j["status"] == s for j in finished) for s in DONE}
    print(f"FIGURES sigkill-x{kills}-{svc.mode}: submitted=30 "  # type: ignore[attr-defined]
          f"succeeded={counts['succeeded']} failed={counts['failed']} duplicated={dups} "
          f"attempts={sum(j['attempts'] for j in finished)}")
    assert kills >= 2
    assert counts["succeeded"] == 30 and dups == 0


@pytest.mark.parametrize("fresh_service", ["embedded", "redis"], indirect=True)
def test_a_stalled_worker_writes_nothing_after_its_job_ran_elsewhere(
        fresh_service: Service) -> None:
    svc = fresh_service
    store = store_of(svc)
    stalled = svc.start_worker()
    stalled_log = svc.logs[-1]
    body = {"kind": "generate", "model": "stamped", "input": {"steps": 60, "preview_every": 1}}
    with svc.client() as c:
        job_id = c.post("/v1/jobs", json=body).json()["id"]
        _wait(lambda: ((c.get(f"/v1/jobs/{job_id}").json().get("progress") or {})
                       .get("step", 0) >= 3), "no progress")
        stalled.send_signal(signal.SIGSTOP)  # frozen past the dead-worker timeout ...
        svc.start_worker(False)
        done = wait_status(c, job_id, DONE, timeout=300)  # ... its job runs elsewhere
        assert done["status"] == "succeeded" and done["attempts"] == 2, done
        events = store.events(job_id)  # the whole log (a stream stops at the final status)
        blobs = blobs_of(svc)
        names = artifact_names(blobs, job_id)
        kept = {n: blobs.read(artifact_key(job_id, n)) for n in names}
        stalled.send_signal(signal.SIGCONT)  # ... then wakes up and takes its next step

        def stale_run_over() -> bool:
            log = stalled_log.read_text(errors="replace")
            return "handed to another run" in log or len(store.events(job_id)) > len(events)

        _wait(stale_run_over, "the stalled worker never took another step", timeout=60)
        time.sleep(2.0)  # anything it still had queued would be written by now
        after = store.events(job_id)
        streamed = parse_sse(c.get(f"/v1/jobs/{job_id}/events").text)
        record = c.get(f"/v1/jobs/{job_id}").json()
    assert after == events, [e for e in after if e not in events][:5]
    assert after[-1].type == "status" and after[-1].data["status"] == "succeeded"
    assert streamed[-1]["event"] == "status" and streamed[-1]["id"] == after[-1].seq
    assert artifact_names(blobs, job_id) == names
    assert {n: blobs.read(artifact_key(job_id, n)) for n in names} == kept
    assert record["status"] == "succeeded" and record["output"] == done["output"]
    assert stalled.poll() is None  # the stalled worker lives on
