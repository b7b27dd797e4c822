"""The OpenAPI document is complete enough for a generator nobody here wrote: a client
generated from the live ``/openapi.json`` by openapi-python-client imports, submits a job,
waits for it and reads a typed result; every route has a readable operation id, and each
schema bound is the one the API enforces."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.fixtures import Service
from tests.helpers import digit_images

pytestmark = pytest.mark.slow
OPERATIONS = {"submitJob", "listJobs", "getJob", "cancelJob", "streamJobEvents", "getArtifact",
              "listModels", "getModel", "listWorkers", "health", "ready", "metrics",
              "deleteJob", "createUpload", "getUpload", "deleteUpload",
              "getUsage", "getWebhookSecret", "deleteModel"}
# The artifact route answers image/png; the generator reads it as bytes when told so.
CONFIG = "content_type_overrides:\n  image/png: application/octet-stream\n"


def _generator() -> str:
    found = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert found, "openapi-python-client is a dev dependency (pip install -e '.[dev]')"
    return found


@pytest.fixture(scope="module")
def generated(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    folder = tmp_path_factory.mktemp("generated")
    spec = folder / "openapi.json"
    spec.write_text(httpx.get(f"{service.url}/openapi.json", timeout=30).text)
    (folder / "config.yml").write_text(CONFIG)
    done = subprocess.run(
        [_generator(), "generate", "--path", str(spec), "--meta", "none", "--output-path",
         str(folder / "convoy_generated"), "--config", str(folder / "config.yml")],
        check=False, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("convoy_generated")
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m.startswith("convoy_generated")]:
            del sys.modules[name]


def test_generated_client_submits_waits_and_reads_a_typed_result(
        service: Service, generated: ModuleType) -> None:
    submit_job = importlib.import_module("convoy_generated.api.jobs.submit_job")
    get_job = importlib.import_module("convoy_generated.api.jobs.get_job")
    get_artifact = importlib.import_module("convoy_generated.api.jobs.get_artifact")
    list_models = importlib.import_module("convoy_generated.api.models.list_models")
    models = importlib.import_module("convoy_generated.models")
    client = generated.Client(base_url=service.url, timeout=httpx.Timeout(60))
    images, labels = digit_images(1)

    catalog = list_models.sync(client=client)
    assert isinstance(catalog, models.ModelList)
    lenet = next(m for m in catalog.models if m.name == "lenet5-digits")
    assert lenet.input_.channels == 1 and "white" in lenet.description

    body = models.ClassifyJob(kind="classify", model="lenet5-digits",
                              input_=models.ClassifyInput(image=images[0], top_k=2))
    job = submit_job.sync(client=client, body=body)
    assert isinstance(job, models.JobRecord), job

    def finished(job: object) -> object:
        deadline = time.monotonic() + 120
        while job.status not in ("succeeded", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            job = get_job.sync(job_id=job.id, client=client)
        return job

    job = finished(job)
    assert job.status == "succeeded"
    assert isinstance(job.output, models.ClassifyOutput)
    top = job.output.predictions[0]
    assert isinstance(top, models.Prediction) and top.label == str(labels[0])
    assert 0.0 <= top.score <= 1.0 and len(job.output.predictions) == 2

    gen = models.GenerateJob(kind="generate", model="tiny-ddpm",
                             input_=models.GenerateInput(n=1, seed=3, steps=2))
    done = finished(submit_job.sync(client=client, body=gen, prefer="wait=5"))
    assert isinstance(done, models.JobRecord) and done.status == "succeeded", done
    assert isinstance(done.output, models.ImagesOutput)
    image = done.output.images[0]
    assert image.seed == 3
    png = get_artifact.sync_detailed(job_id=done.id, name=image.name, client=client)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    missing = get_job.sync(job_id="no-such-job", client=client)
    assert isinstance(missing, models.ErrorBody) and missing.error.code == "not_found"


def test_every_route_has_a_readable_operation_id_and_typed_answers(service: Service) -> None:
    doc = httpx.get(f"{service.url}/openapi.json", timeout=30).json()
    seen = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            seen.add(op["operationId"])
            ok = next(v for k, v in sorted(op["responses"].items()) if k.startswith("2"))
            content = ok.get("content", {})  # none for 204
            if "application/json" in content:
                assert "$ref" in content["application/json"]["schema"], (method, path)
    assert seen == OPERATIONS
    schemas = doc["components"]["schemas"]
    for name in ("JobRecord", "JobList", "ModelInfo", "WorkerInfo", "ErrorBody", "StatusEvent",
                 "ProgressEvent", "LogEvent", "JobError", "Artifact"):
        assert name in schemas, name
    events = doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert set(events["content"]["text/event-stream"]["x-event-payloads"]) == {
        "status", "progress", "preview", "log", "output", "error", "queue", "webhook",
        "train", "epoch"}
    for kind in ("Classify", "Segment", "Reconstruct", "Sample", "Generate", "Finetune"):
        assert schemas[f"{kind}Job"]["examples"], kind
        for name, field in schemas[f"{kind}Input"]["properties"].items():
            assert field.get("description") and field.get("examples"), (kind, name)
        for name in ("model", "id", "webhook", "timeout_s"):
            field = schemas[f"{kind}Job"]["properties"][name]
            assert field.get("description") and field.get("examples"), (kind, name)


def test_schema_bounds_are_the_enforced_ones(service: Service) -> None:
    doc = httpx.get(f"{service.url}/openapi.json", timeout=30).json()
    gen = doc["components"]["schemas"]["GenerateInput"]["properties"]
    assert gen["n"]["maximum"] == 16 and gen["steps"]["maximum"] == 1000
    with service.client() as c:
        base = {"kind": "generate", "model": "tiny-ddpm"}
        for field, top in (("n", 16), ("steps", 1000)):
            r = c.post("/v1/jobs", json={**base, "input": {field: top + 1}})
            assert r.status_code == 422 and field in r.json()["error"]["message"], r.text
