"""The app in-process (no worker): OpenAPI, readiness, error envelope, settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings, UnsafeSettings
from service.app import create_app


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path)))


def test_openapi_describes_every_kind(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("ClassifyInput", "SegmentInput", "ReconstructInput", "SampleInput",
                 "GenerateInput"):
        assert name in schemas, name
    assert "top_k" in schemas["ClassifyInput"]["properties"]
    assert set(schemas["GenerateInput"]["properties"]["scheduler"]["enum"]) >= {
        "ddpm", "ddim", "dpmpp", "euler"}
    assert client.get("/docs").status_code == 200


def test_readyz_needs_a_worker(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["checks"]["store"] == "ok" and r.json()["checks"]["workers"] == 0
    assert client.get("/healthz").status_code == 200


def test_errors_use_the_envelope(client: TestClient) -> None:
    r = client.get("/v1/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    r = client.post("/v1/jobs", json={"kind": "paint", "model": "lenet5-digits", "input": {}})
    assert r.status_code == 422
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


def test_models_carry_labels_input_and_metrics(client: TestClient) -> None:
    m = client.get("/v1/models/lenet5-digits").json()
    assert m["labels"] == [str(i) for i in range(10)]
    assert m["input"] == {"channels": 1, "height": 32, "width": 32}
    assert m["metrics"]["top1"] >= 0.985


def test_public_bind_without_keys_is_refused() -> None:
    with pytest.raises(UnsafeSettings):
        Settings().check_bind("0.0.0.0")
    Settings().check_bind("127.0.0.1")
    Settings(api_keys="alice:k1").check_bind("0.0.0.0")
    Settings(insecure=True).check_bind("0.0.0.0")
    r = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0",
                        "--no-worker"], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "CONVOY_DATA_DIR": "/tmp/unused"},
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and "refusing" in r.stdout + r.stderr


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVOY_CATALOG", "a.toml:b.toml")
    monkeypatch.setenv("CONVOY_API_KEYS", "alice:k1,bob:k2")
    s = Settings()
    assert [p.name for p in s.catalog] == ["a.toml", "b.toml"]
    assert s.keys() == {"k1": "alice", "k2": "bob"} and s.embedded
    monkeypatch.setenv("CONVOY_API_KEYS", "no-colon")
    with pytest.raises(UnsafeSettings):
        Settings().keys()


def test_the_submissions_fast_path_answers_as_the_route_does(tmp_path: Path) -> None:
    """POST /v1/jobs goes through a thin ASGI path (service.routes.jobs.SubmitFastPath);
    the same requests through the framework's route get the same answers."""
    from PIL import Image

    from service.routes.jobs import SubmitFastPath
    from tests.helpers import b64_png

    def answers(fast: bool) -> list[tuple[int, Any, str | None]]:
        app = create_app(Settings(data_dir=tmp_path / str(fast), api_keys="ann:k1",
                                  max_body_bytes=64 * 1024, rate_limit_per_s=1000))
        if not fast:
            app.user_middleware = [m for m in app.user_middleware if m.cls is not SubmitFastPath]
        assert any(m.cls is SubmitFastPath for m in app.user_middleware) == fast
        image = b64_png(Image.new("L", (32, 32), 200))
        good = {"kind": "classify", "model": "lenet5-digits", "input": {"image": image}}
        key = {"authorization": "Bearer k1"}
        cases: list[tuple[dict[str, str], Any]] = [
            ({}, good),  # no key
            ({"authorization": "Bearer nope"}, good),
            (key, b"{not json"),
            (key, {"kind": "paint", "model": "lenet5-digits", "input": {}}),
            (key, {**good, "model": "nope"}),
            (key, {**good, "input": {"image": "not base64!"}}),
            (key, {**good, "input": {"image": b64_png(Image.new("L", (4096, 4096)))}}),
            (key, b"x" * (65 * 1024)),  # over the body limit
            (key, b"--"),  # multipart without a boundary
            (key, good),
            (key, {**good, "id": "mine-1"}),
            (key, {**good, "id": "mine-1"}),  # the same again: the same record
            (key, {**good, "id": "mine-1", "input": {"image": image, "top_k": 2}}),  # conflict
        ]
        out = []
        with TestClient(app) as client:
            for headers, body in cases:
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                kind = "multipart/form-data" if body == b"--" else "application/json"
                r = client.post("/v1/jobs", content=content,
                                headers={**headers, "content-type": kind})
                data = r.json()
                if "id" in data and data["id"] != "mine-1":
                    data = {k: v for k, v in data.items()
                            if k not in ("id", "created_at", "links")}
                elif "id" in data:
                    data = {k: v for k, v in data.items() if k != "created_at"}
                out.append((r.status_code, data, r.headers.get("retry-after")))
        return out

    fast, route = answers(True), answers(False)
    assert [a[0] for a in fast] == [401, 401, 422, 422, 404, 422, 422, 413, 422, 202, 202, 200, 409]
    assert fast == route
