"""The API, the SDK and the CLI run on the base install: no torch, diffusers or transformers
in their processes (``pip install .`` does not even install them; ``.[worker]`` does)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "sklearn", "safetensors", "numpy")
# The worker's runtime: an API process records and cancels jobs through the store alone.
RUNTIME = ("workers.runtime", "workers.batcher", "workers.cache", "workers.worker",
           "workers.tasks")

# Creates the app, serves a submission, a listing, the models and the OpenAPI document in
# process, then imports the SDK and the CLI and reports which heavy modules got imported.
PROBE = """
import json, sys, tempfile
from fastapi.testclient import TestClient
from service.app import create_app
from workers.contract import EXAMPLE_IMAGE
from workers.settings import Settings

app = create_app(Settings(data_dir=tempfile.mkdtemp(), redis_url=None))
with TestClient(app) as c:
    assert c.get("/openapi.json").status_code == 200
    assert c.get("/v1/models").status_code == 200
    r = c.post("/v1/jobs", json={"kind": "classify", "model": "lenet5-digits",
                                 "input": {"image": EXAMPLE_IMAGE}})
    assert r.status_code == 202, r.text
    assert c.get("/v1/jobs").json()["jobs"]
    job = r.json()["id"]
    assert c.post(f"/v1/jobs/{job}/cancel").json()["status"] in ("canceled", "running")
    assert c.delete(f"/v1/jobs/{job}").status_code in (204, 409)
print(json.dumps(sorted(m for m in sys.modules if m in RUNTIME)))
import service.client, service.cli
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""


def run_probe() -> list[list[str]]:
    """(the worker runtime's modules the API imported, the heavy modules imported)."""
    code = f"HEAVY = {HEAVY!r}\nRUNTIME = {RUNTIME!r}\n{PROBE}"
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-2:]]


def test_api_sdk_and_cli_never_import_torch() -> None:
    assert run_probe()[1] == []


def test_the_api_never_imports_the_worker_runtime() -> None:
    """Submitting, listing, canceling and deleting go through the store, not the runtime."""
    assert run_probe()[0] == []


def test_base_install_leaves_the_model_stack_to_the_worker_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    worker = " ".join(project["optional-dependencies"]["worker"])
    for name in ("torch", "torchvision", "diffusers", "transformers", "safetensors"):
        assert name not in base and name in worker, name
    assert "'.[worker,dev]'" in (ROOT / "Makefile").read_text()
