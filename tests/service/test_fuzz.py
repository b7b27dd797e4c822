"""Property-based fuzzing of the API against its own OpenAPI document (Schemathesis): no 5xx,
and every response — errors included — has a documented status, content type, headers and
body schema. Runs in-process (embedded store under a temporary folder, no worker)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from core.settings import Settings
from service.app import create_app

DATA = Path(tempfile.mkdtemp(prefix="convoy-fuzz-"))
APP = create_app(Settings(data_dir=DATA, redis_url=None, api_keys="alice:ka,bob:kb",
                          max_wait_s=0.2, rate_limit_per_s=1000.0, rate_limit_burst=100000))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance]
CASES = {"run": 0}


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    print(f"FIGURES fuzz: cases={CASES['run']}")
    APP.state.convoy.store.close()
    shutil.rmtree(DATA, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_answers_as_documented(case: schemathesis.Case) -> None:
    CASES["run"] += 1
    excluded = []
    if case.operation.path == "/readyz":  # 503 is its documented answer without a worker
        excluded.append(checks.not_a_server_error)
    case.call_and_validate(headers={"Authorization": "Bearer ka"}, checks=CHECKS,
                           excluded_checks=excluded)


def test_fuzzing_reached_every_operation() -> None:
    """Guards the fuzz above against a schema that lost its routes or generated nothing."""
    paths = {op.ok().path for op in schema.get_all_operations()}
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/artifacts/{name}", "/v1/jobs/{job_id}/cancel",
            "/v1/models", "/v1/models/{name}", "/v1/workers"} <= paths
    if CASES["run"] == 0:
        pytest.skip("counts cases only after the fuzz test above ran")
    assert CASES["run"] >= 10 * len(paths)
