"""Step-level batching through the service (``CONVOY_STEP_BATCHING=true``): a generate job
submitted while another one samples joins its loop, finishes long before it, and draws the
image it draws alone."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import Service, wait_status

pytestmark = pytest.mark.slow


def pixels(c, job: dict) -> np.ndarray:  # type: ignore[no-untyped-def]
    r = c.get(job["output"]["images"][0]["url"])
    assert r.status_code == 200
    return np.asarray(Image.open(io.BytesIO(r.content)), dtype=np.int16)


def test_a_job_joins_a_running_loop_and_draws_what_it_draws_alone(
    tmp_path: Path, tiny_catalog: Path,
) -> None:
    catalog = tmp_path / "slow.toml"
    catalog.write_text(f"""
[models.slow-ddpm]
family = "slow-diffusers"
kinds = ["generate"]
path = "{tiny_catalog.parent / 'tiny-ddpm'}"
config = {{ step_s = 0.05 }}
max_batch = 4
""")
    svc = Service(tmp_path, None, (catalog,), CONVOY_STEP_BATCHING="true")
    try:
        svc.start_api()
        svc.start_worker()
        with svc.client() as c:
            long = c.post("/v1/jobs", json={"kind": "generate", "model": "slow-ddpm",
                                             "input": {"seed": 1, "steps": 200}}).json()
            running = wait_status(c, long["id"], ("running",))
            while not (running.get("progress") or {}).get("step"):
                time.sleep(0.02)
                running = c.get(f"/v1/jobs/{long['id']}").json()
            short = {"kind": "generate", "model": "slow-ddpm",
                     "input": {"seed": 2, "steps": 5, "scheduler": "ddim"}}
            r = c.post("/v1/jobs", json=short, headers={"Prefer": "wait=30"})
            joined = r.json()
            assert joined["status"] == "succeeded", joined
            state = c.get(f"/v1/jobs/{long['id']}").json()
            assert state["status"] == "running" and state["progress"]["step"] < 150
            assert c.post(f"/v1/jobs/{long['id']}/cancel").status_code == 200
            assert wait_status(c, long["id"], ("canceled", "succeeded"))["status"] == "canceled"
            r = c.post("/v1/jobs", json=short, headers={"Prefer": "wait=30"})
            alone = r.json()
            assert alone["status"] == "succeeded", alone
            assert np.abs(pixels(c, joined) - pixels(c, alone)).max() <= 2
    finally:
        svc.stop()
