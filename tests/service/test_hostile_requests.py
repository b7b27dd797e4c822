"""Hostile requests against the in-process app: images that decode to far more than they
weigh, bodies that would make huge error replies, malformed Last-Event-IDs, and settings or
files that would leak one owner's data to another."""

from __future__ import annotations

import base64
import io
import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.errors import Unavailable
from core.images import DecodeBudget, decode_image
from core.settings import Settings, UnsafeSettings
from service.app import create_app
from tests.fixtures import TEST_CATALOG
from tests.helpers import parse_sse

ALICE = {"Authorization": "Bearer ka"}


def flat_image(side: int, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("L", (side, side), 7).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return base64.b64encode(buf.getvalue()).decode()


def classify(image: str) -> dict[str, Any]:
    return {"kind": "classify", "model": "lenet5-digits", "input": {"image": image}}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """In-process apps with the key 'ka' of alice (and the test catalog: parked, sleepy)."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TEST_CATALOG.format(marker=tmp_path / "started.txt"))
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(**{"data_dir": tmp_path / f"data-{len(clients)}",
                               "catalog": [catalog], "api_keys": "alice:ka", **overrides})
        client = TestClient(create_app(settings)).__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- images ----------------------------------------------------------------------------------
def test_an_image_far_over_the_models_input_size_is_refused(api: Callable[..., TestClient]
                                                            ) -> None:
    c = api()  # lenet5-digits takes 32x32: up to 16 times that each way, 512x512
    r = c.post("/v1/jobs", json=classify(flat_image(4096)), headers=ALICE)
    assert r.status_code == 422, r.text[:300]
    assert "over the limit of 262144" in r.json()["error"]["message"]
    assert c.post("/v1/jobs", json=classify(flat_image(512)), headers=ALICE).status_code == 202
    c = api(input_scale=0)  # the bound off: only MAX_IMAGE_PIXELS
    assert c.post("/v1/jobs", json=classify(flat_image(1024)), headers=ALICE).status_code == 202


def test_decodes_past_the_budget_wait_their_turn_then_get_503() -> None:
    budget = DecodeBudget(pixels=100, wait_s=0.2)
    image = flat_image(8)  # 64 pixels
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with budget.hold(64):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        decode_image(image, 10**6, budget=budget)
    assert time.monotonic() - t0 >= 0.15 and caught.value.retry_after >= 1
    threading.Timer(0.1, release.set).start()
    assert decode_image(image, 10**6, budget=budget).size == (8, 8)  # waited for the other
    holder.join()
    assert budget.used == 0 and budget.peak == 64
    assert decode_image(flat_image(16), 10**6, budget=budget).size == (16, 16)  # alone: over


# -- bodies ----------------------------------------------------------------------------------
def test_half_a_million_unknown_keys_get_a_small_422_quickly(api: Callable[..., TestClient]
                                                             ) -> None:
    c = api()
    body = json.dumps({"kind": "generate", "model": "sleepy",
                       "input": {f"k{i}": i for i in range(500_000)}}).encode()
    t0 = time.perf_counter()
    r = c.post("/v1/jobs", content=body, headers={**ALICE, "content-type": "application/json"})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert len(r.content) < 4096, len(r.content)
    assert elapsed < 3.0, elapsed  # it was 5 s (and 55 MB) with the loop blocked


def test_a_422_lists_the_first_errors_only_with_values_cut_short(
        api: Callable[..., TestClient]) -> None:
    c = api(max_error_details=5)
    long_key = "x" * 10_000
    body = {"kind": "generate", "model": "sleepy",
            "input": {long_key: 1, **{f"k{i}": i for i in range(40)}}}
    r = c.post("/v1/jobs", json=body, headers=ALICE)
    error = r.json()["error"]
    assert r.status_code == 422 and len(error["details"]) == 5
    assert "and 40 more errors; the first 5 are listed" in error["message"]
    assert len(r.content) < 2048
    # errors outside the body (a query parameter) are bounded the same way
    r = c.get("/v1/jobs", params={"limit": "x" * 5000}, headers=ALICE)
    assert r.status_code == 422 and len(r.content) < 2048


def test_key_and_rate_limit_are_checked_before_the_body(api: Callable[..., TestClient]) -> None:
    c = api(rate_limit_per_s=0.01, rate_limit_burst=1)
    garbage = {"content-type": "application/json"}
    r = c.post("/v1/jobs", content=b"{not json", headers=garbage)
    assert r.status_code == 401  # not 422: the body was never parsed
    gen = {"kind": "generate", "model": "sleepy", "input": {"steps": 2}}
    assert c.post("/v1/jobs", json=gen, headers=ALICE).status_code == 202
    r = c.post("/v1/jobs", content=b"{not json", headers={**ALICE, **garbage})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_waits_count_against_the_open_streams_of_a_key(api: Callable[..., TestClient]) -> None:
    c = api(max_streams_per_key=2)
    opened = c.app.state.convoy.open_per_key  # type: ignore[attr-defined]
    releases = [opened.acquire("ka"), opened.acquire("ka")]  # two streams open
    gen = {"kind": "generate", "model": "parked", "input": {}}
    r = c.post("/v1/jobs", json=gen, headers={**ALICE, "Prefer": "wait=1"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert c.post("/v1/jobs", json=gen, headers=ALICE).status_code == 202  # no wait: no slot
    releases[0]()
    releases[0]()  # a release counts once
    r = c.post("/v1/jobs", json=gen, headers={**ALICE, "Prefer": "wait=0.2"})
    assert r.status_code == 202 and opened.count("ka") == 1


# -- Last-Event-ID ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["²", "1" * 23, "-1", "abc", "1e3", "٣"])
def test_a_last_event_id_that_is_no_event_id_gets_400(api: Callable[..., TestClient],
                                                      value: str) -> None:
    c = api()
    job = c.post("/v1/jobs", json={"kind": "generate", "model": "parked", "input": {}},
                 headers=ALICE).json()
    c.post(f"/v1/jobs/{job['id']}/cancel", headers=ALICE)
    raw = value.encode("latin-1") if value != "٣" else value.encode()  # as a client sends it
    r = c.get(f"/v1/jobs/{job['id']}/events", headers={**ALICE, "Last-Event-ID": raw})
    assert r.status_code == 400, (r.status_code, r.text[:200])
    assert r.json()["error"]["code"] == "bad_request"
    r = c.get(f"/v1/jobs/{job['id']}/events", headers={**ALICE, "Last-Event-ID": "1"})
    assert r.status_code == 200
    assert [e["data"] for e in parse_sse(r.text)][-1] == {"status": "canceled"}


# -- keys, files, readiness ------------------------------------------------------------------
def test_a_key_listed_for_two_owners_refuses_to_start(tmp_path: Path) -> None:
    assert Settings(api_keys="alice:k1,alice:k1").keys() == {"k1": "alice"}
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("bob:k1\n")
    with pytest.raises(UnsafeSettings, match="two owners"):
        Settings(api_keys="alice:k1", api_keys_file=keys_file).keys()
    with pytest.raises(UnsafeSettings, match="two owners"):
        create_app(Settings(data_dir=tmp_path / "d", api_keys="alice:k1,bob:k1"))


def test_the_data_dir_is_private(api: Callable[..., TestClient], tmp_path: Path) -> None:
    c = api()
    c.post("/v1/jobs", json={"kind": "generate", "model": "parked", "input": {}}, headers=ALICE)
    data = tmp_path / "data-0"

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(data) == 0o700 and mode(data / "broker") == 0o700
    for name in ("convoy.db", "convoy.db-wal", "convoy.db-shm"):
        if (data / name).exists():
            assert mode(data / name) == 0o600, name
    assert mode(data / "convoy.db") == 0o600


def test_readyz_does_not_show_the_store_address(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:9/0")
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["store"].startswith("down")
    assert "127.0.0.1" not in r.text and ":9" not in r.text
