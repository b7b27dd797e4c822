"""Security: API keys and owner scoping, request limits, hostile inputs, checksummed weights
and a pickle message refused by the worker.

The in-process app (no worker) covers what needs no job to run, in both modes (Redis DB 14
for its Redis mode); the session ``service`` (real processes) covers the rest.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import shutil
import socket
import struct
import time
import tracemalloc
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.conftest import redis_db_url
from tests.fixtures import TEST_CATALOG, Service, wait_status
from tests.helpers import b64_png, digit_images, parse_sse
from workers.errors import InvalidInput
from workers.images import decode_image
from workers.settings import Settings

KEYS = "alice:ka,bob:kb"
ALICE, BOB = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kb"}
NEVER = "n" * 27  # an id no job has


def gen(**extra: Any) -> dict[str, Any]:
    return {"kind": "generate", "model": "sleepy", "input": {"steps": 4, **extra}}


def classify(image: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "classify", "model": "lenet5-digits", "input": {"image": image, **extra}}


def envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


@pytest.fixture
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Builds in-process apps with two keys, in the mode of ``request.param`` (default
    embedded), with the test catalog (sleepy, parked, poison)."""
    mode = getattr(request, "param", "embedded")
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TEST_CATALOG.format(marker=tmp_path / "started.txt"))
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(**{
            "data_dir": tmp_path / f"data-{len(clients)}", "catalog": [catalog],
            "redis_url": redis_db_url(14) if mode == "redis" else None, "api_keys": KEYS,
            **overrides})
        client = TestClient(create_app(settings)).__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- keys and owners -----------------------------------------------------------------------------
def test_every_v1_route_needs_a_known_key(api: Callable[..., TestClient]) -> None:
    c = api()
    routes = [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{NEVER}"),
              ("GET", f"/v1/jobs/{NEVER}/events"), ("GET", f"/v1/jobs/{NEVER}/artifacts/a.png"),
              ("POST", f"/v1/jobs/{NEVER}/cancel"), ("GET", "/v1/models"),
              ("GET", "/v1/models/sleepy"), ("GET", "/v1/workers")]
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2E6a2E="},
                    {"Authorization": "ka"}, {"Authorization": "Bearer "}):
        for method, path in routes:
            r = c.request(method, path, headers=headers, json=gen() if method == "POST" else None)
            envelope(r, 401, "unauthorized")
    assert c.get("/v1/models", headers=ALICE).status_code == 200
    assert c.get("/healthz").status_code == 200


def test_keys_from_a_file(api: Callable[..., TestClient], tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# owner:key, one a line\ncarol:kc\n\n")
    c = api(api_keys=None, api_keys_file=keys)
    assert c.get("/v1/models", headers={"Authorization": "Bearer kc"}).status_code == 200
    envelope(c.get("/v1/models", headers=ALICE), 401, "unauthorized")


@pytest.mark.parametrize("api", ["embedded", "redis"], indirect=True)
def test_a_job_is_invisible_to_other_owners(api: Callable[..., TestClient]) -> None:
    c = api()
    job_id = c.post("/v1/jobs", json=gen(), headers=ALICE).json()["id"]
    png = base64.b64decode(b64_png(np.zeros((4, 4), "uint8")))
    c.app.state.convoy.store.put_artifact(job_id, "image-0.png", png, "image/png")  # type: ignore[attr-defined]
    for method, path in [("GET", "/v1/jobs/{}"), ("GET", "/v1/jobs/{}/events"),
                         ("GET", "/v1/jobs/{}/artifacts/image-0.png"),
                         ("POST", "/v1/jobs/{}/cancel")]:
        theirs = envelope(c.request(method, path.format(job_id), headers=BOB), 404, "not_found")
        nothing = envelope(c.request(method, path.format(NEVER), headers=BOB), 404, "not_found")
        assert theirs["message"].replace(job_id, NEVER) == nothing["message"]  # nothing told
    for query in ({}, {"status": "queued"}, {"kind": "generate"}):
        assert c.get("/v1/jobs", params=query, headers=BOB).json()["jobs"] == []
    # the owner sees it all, and the other owner's cancel did nothing
    assert c.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["status"] == "queued"
    assert c.get(f"/v1/jobs/{job_id}/artifacts/image-0.png", headers=ALICE).content == png
    assert [j["id"] for j in c.get("/v1/jobs", headers=ALICE).json()["jobs"]] == [job_id]
    assert c.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).json()["status"] == "canceled"
    events = parse_sse(c.get(f"/v1/jobs/{job_id}/events", headers=ALICE).text)
    assert events[-1]["data"] == {"status": "canceled"}


# -- limits --------------------------------------------------------------------------------------
def test_rate_limit_is_keyed_on_the_api_key(api: Callable[..., TestClient]) -> None:
    c = api(rate_limit_per_s=0.01, rate_limit_burst=2)
    for i in range(2):
        r = c.post("/v1/jobs", json=gen(), headers={**ALICE, "X-Forwarded-For": f"10.0.0.{i}"})
        assert r.status_code == 202
    r = c.post("/v1/jobs", json=gen(), headers={**ALICE, "X-Forwarded-For": "10.9.9.9"})
    envelope(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert c.post("/v1/jobs", json=gen(), headers=BOB).status_code == 202


@pytest.mark.parametrize("api", ["embedded", "redis"], indirect=True)
def test_queued_jobs_are_capped_per_key_and_in_total(api: Callable[..., TestClient]) -> None:
    c = api(max_queued_per_owner=2, max_queue_depth=3)
    for _ in range(2):
        assert c.post("/v1/jobs", json=gen(), headers=ALICE).status_code == 202
    r = c.post("/v1/jobs", json=gen(), headers=ALICE)
    envelope(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert c.post("/v1/jobs", json=gen(), headers=BOB).status_code == 202
    r = c.post("/v1/jobs", json=gen(), headers=BOB)
    envelope(r, 503, "unavailable")
    assert int(r.headers["retry-after"]) >= 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_PNG = base64.b64decode(b64_png(np.zeros((8, 8), "uint8")))
HOSTILE = {
    "truncated png": (classify(_b64(_PNG[: len(_PNG) // 2])), 422, "invalid_input"),
    "pdf": (classify(_b64(b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF")), 415,
            "unsupported_media_type"),
    "gif": (classify(_b64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")), 415,
            "unsupported_media_type"),
    "not base64": (classify("%%% not base64 %%%"), 422, "invalid_input"),
    "steps 10**6": (gen(steps=10**6), 422, "invalid_input"),
    "steps over the model's limit": (gen(steps=5000), 422, "invalid_input"),
    "n 10**6": (gen(n=10**6), 422, "invalid_input"),
    "n over the model's limit": (gen(n=100), 422, "invalid_input"),
    "height over the model's limit": (gen(height=100_000), 422, "invalid_input"),
    "prompt over the model's limit": (gen(prompt="x" * 5000), 422, "invalid_input"),
    "top_k 10**6": (classify(b64_png(np.zeros((8, 8), "uint8")), top_k=10**6), 422,
                    "invalid_input"),
    "unknown field": ({**gen(), "priority": "high"}, 422, "invalid_input"),
    "unknown input field": (gen(shell="rm -rf /"), 422, "invalid_input"),
    "wrong type": (gen(steps="many"), 422, "invalid_input"),
    "input of the wrong type": ({**gen(), "input": ["steps", 4]}, 422, "invalid_input"),
    "unknown kind": ({**gen(), "kind": "exec"}, 422, "invalid_input"),
    "timeout over the bound": ({**gen(), "timeout_s": 10**9}, 422, "invalid_input"),
    "json array": ([gen()], 422, "invalid_input"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gets_a_4xx_envelope(api: Callable[..., TestClient], case: str) -> None:
    body, status, code = HOSTILE[case]
    envelope(api().post("/v1/jobs", json=body, headers=ALICE), status, code)


def test_undecodable_bodies_get_a_4xx_envelope(api: Callable[..., TestClient]) -> None:
    c = api()
    for raw in (b"\xff\xfe\x00garbage", b'{"kind": "generate",', b""):
        r = c.post("/v1/jobs", content=raw, headers={**ALICE, "content-type": "application/json"})
        envelope(r, 422, "invalid_input")


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header for a width x height greyscale image and a tiny IDAT: 10^10 pixels
    declared, a few hundred bytes sent."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_fast_with_flat_memory() -> None:
    bomb = _b64(png_bomb())
    assert Image.open(io.BytesIO(base64.b64decode(bomb))).size == (100_000, 100_000)  # well-formed
    timings = []
    tracemalloc.start()
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            with pytest.raises(InvalidInput, match="10000000000 pixels"):
                decode_image(bomb, 4096 * 4096)
            timings.append(time.perf_counter() - t0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert min(timings) < 0.1, timings
    assert peak < 5 * 2**20, peak  # the decoded image would take 10 GB


def test_decompression_bomb_over_http(service: Service) -> None:
    body = json.dumps(classify(_b64(png_bomb()))).encode()
    with service.client() as c:
        c.get("/healthz")  # the connection is open before the clock starts
        before = _peak_rss(service)
        t0 = time.perf_counter()
        r = c.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        elapsed = time.perf_counter() - t0
    grown = _peak_rss(service) - before
    print(f"FIGURES bomb over HTTP: {elapsed * 1000:.1f} ms, API peak RSS +{grown} bytes")
    assert "pixels" in envelope(r, 422, "invalid_input")["message"]
    assert elapsed < 1.0, elapsed  # generous: a loaded machine; the decoder itself is < 100 ms
    assert grown < 50 * 2**20


def _peak_rss(svc: Service) -> int:
    assert svc.api is not None
    for line in Path(f"/proc/{svc.api.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_oversized_bodies_are_refused_while_reading(service: Service) -> None:
    size = 20 * 2**20
    head = b'{"kind": "classify", "model": "lenet5-digits", "input": {"image": "'

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(size // 2**20):
            yield b"A" * 2**20
        yield b'"}}'

    with service.client() as c:
        r = c.post("/v1/jobs", content=head + b"A" * size + b'"}}',
                   headers={"content-type": "application/json"})
        envelope(r, 413, "payload_too_large")
    with service.client() as c:  # no Content-Length: counted as it arrives
        r = c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        envelope(r, 413, "payload_too_large")
        assert c.get("/healthz").status_code == 200


def test_without_keys_the_server_binds_loopback_and_says_so(service: Service) -> None:
    log = next(p for p in service.logs if p.name.startswith("api-")).read_text()
    assert "No API keys configured" in log and "loopback" in " ".join(log.split())
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no address besides loopback")
    with pytest.raises(OSError), socket.create_connection((outward, service.port), timeout=2):
        pass


def _outward_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


# -- loading and the queue -----------------------------------------------------------------------
class _Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_weights_are_checked_before_they_load(tmp_path: Path) -> None:
    from models.checkpoint import UnsafeCheckpoint, load_state, sha256_of

    original = Path(__file__).resolve().parents[2] / "models/weights/lenet5-digits.safetensors"
    digest = sha256_of(original)
    assert load_state(original, digest)  # the right checksum loads
    tampered = tmp_path / "lenet5.safetensors"
    data = bytearray(original.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(UnsafeCheckpoint, match="checksum mismatch"):
        load_state(tampered, digest)
    marker = tmp_path / "unpickled"
    disguised = tmp_path / "weights.safetensors"
    disguised.write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(Exception):  # noqa: B017 - refused, whatever the reason given
        load_state(disguised)
    assert not marker.exists()


def test_a_job_on_tampered_weights_fails(tmp_path: Path) -> None:
    import torch

    from models.catalog import Catalog
    from models.checkpoint import sha256_of
    from tests.support.jobs import job, put
    from workers.cache import ModelCache
    from workers.runtime import WorkerRuntime
    from workers.store.sqlite import SQLiteStore

    weights = Path(__file__).resolve().parents[2] / "models/weights/lenet5-digits.safetensors"
    tampered = tmp_path / "lenet5.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    tampered.write_bytes(bytes(data))
    shutil.copy(weights.with_suffix(".json"), tampered.with_suffix(".json"))
    (tmp_path / "catalog.toml").write_text(
        f'[models.pinned]\nfamily = "lenet5"\nkinds = ["classify"]\nweights = "{weights}"\n'
        f'sha256 = "{sha256_of(weights)}"\n\n'
        f'[models.tampered]\nfamily = "lenet5"\nkinds = ["classify"]\nweights = "{tampered}"\n'
        f'sha256 = "{sha256_of(weights)}"\n')
    settings = Settings(data_dir=tmp_path, redis_url=None, catalog=[tmp_path / "catalog.toml"])
    store = SQLiteStore(tmp_path / "convoy.db")
    runtime = WorkerRuntime(settings, store, Catalog.load(settings.catalog),
                            ModelCache(torch.device("cpu")))
    image = digit_images(1)[0][0]
    for model in ("pinned", "tampered"):
        put(store, job(model, owner="local", model=model, input={"image": image, "top_k": 1}))
    assert runtime.run_job("pinned") == "succeeded"
    assert runtime.run_job("tampered") == "invalid_input"
    failed = store.get("tampered")
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and "checksum mismatch" in failed.error["message"]


def test_a_pickle_message_is_refused_by_the_worker(service: Service, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    body = pickle.dumps(((_Marker(marker),), {}, {"callbacks": None, "errbacks": None,
                                                  "chain": None, "chord": None}))
    pickle.loads(body)  # the payload is live: loading it creates the marker
    assert marker.exists()
    marker.unlink()
    task_id = str(uuid.uuid4())
    message = json.dumps({
        "body": _b64(body), "content-encoding": "binary",
        "content-type": "application/x-python-serialize",
        "headers": {"lang": "py", "task": "convoy.run_job", "id": task_id, "root_id": task_id,
                    "parent_id": None, "group": None, "retries": 0, "eta": None,
                    "expires": None, "timelimit": [None, None], "argsrepr": "()",
                    "kwargsrepr": "{}", "origin": "intruder", "ignore_result": True},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "convoy"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}})
    redis_url = service.env.get("CONVOY_REDIS_URL")
    if redis_url:
        import redis

        r = redis.Redis.from_url(redis_url)
        r.lpush("convoy", message)
    else:
        folder = Path(service.env["CONVOY_DATA_DIR"]) / "broker"
        tmp = folder / f".tmp-{task_id}"
        tmp.write_text(message)
        tmp.rename(folder / f"{time.time_ns():020d}_{task_id}.convoy.msg")
    with service.client() as c:  # the worker keeps serving
        job = c.post("/v1/jobs", json=gen()).json()
        assert wait_status(c, job["id"], ("succeeded", "failed"), 120)["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while "Refusing to deserialize untrusted content" not in _worker_logs(service):
        assert time.monotonic() < deadline, service.tail()
        time.sleep(0.2)
    assert not marker.exists()
    if redis_url:  # discarded, not left for later
        queued = r.lrange("convoy", 0, -1) + list(r.hvals("unacked"))
        assert not any(task_id.encode() in m for m in queued)
    else:
        assert not any(task_id in p.name for p in folder.iterdir())


def _worker_logs(svc: Service) -> str:
    return "".join(p.read_text(errors="replace") for p in svc.logs if p.name.startswith("worker-"))
