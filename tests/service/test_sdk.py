"""The SDK (``service.client``): retries after Retry-After, typed errors, event streams that
resume after a dropped connection — against a scripted transport — and the whole job life
against the real service in both modes, sync and async."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    Event,
    InvalidInput,
    JobRecord,
    NotFound,
    Unavailable,
)
from service.client import sync as sync_module
from service.schemas import ClassifyOutput, ImagesOutput
from tests.fixtures import Service
from tests.helpers import digit_images


def record(job_id: str = "j1", status: str = "queued", **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "kind": "classify", "model": "m", "status": status,
            "created_at": "2026-01-01T00:00:00.000Z", "input": {}, "attempts": 0,
            "links": {"self": "s", "events": "e", "cancel": "c"}, **extra}


def error(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers,
                          json={"error": {"code": code, "message": f"{code}!", "details": None}})


def sse(*events: tuple[int, str, dict[str, Any]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {t}\ndata: {json.dumps(d)}\n\n".encode()
                    for i, t, d in events)


class Dropped(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends some bytes, then loses the connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection lost")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection lost")


def scripted(answers: list[Callable[[httpx.Request], httpx.Response]],
             seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)(request)
    return httpx.MockTransport(handle)


def test_429_and_503_are_retried_after_their_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(sync_module.time, "sleep", slept.append)
    seen: list[httpx.Request] = []
    answers = [lambda r: error(429, "rate_limited", **{"Retry-After": "3"}),
               lambda r: error(503, "unavailable", **{"Retry-After": "1"}),
               lambda r: httpx.Response(202, json=record())]
    with Client("http://convoy", transport=scripted(answers, seen)) as c:
        job = c.submit("classify", "m", {"image": "x"}, wait=5)
    assert isinstance(job, JobRecord) and job.status == "queued"
    assert slept == [3.0, 1.0] and len(seen) == 3
    assert seen[0].headers["prefer"] == "wait=5"
    assert seen[0].headers["content-type"] == "application/json"

    answers = [lambda r: error(503, "unavailable", **{"Retry-After": "2"})] * 3
    transport = scripted(list(answers), seen)
    with Client("http://convoy", retries=2, transport=transport) as c, \
            pytest.raises(Unavailable) as caught:
        c.get("j1")
    assert caught.value.retry_after == 2.0 and caught.value.code == "unavailable"


def test_error_answers_become_typed_errors() -> None:
    seen: list[httpx.Request] = []
    answers = [lambda r: error(404, "not_found"), lambda r: error(422, "invalid_input")]
    with Client("http://convoy", transport=scripted(answers, seen)) as c:
        with pytest.raises(NotFound) as missing:
            c.get("nope")
        with pytest.raises(InvalidInput):
            c.submit("classify", "m", {})
    assert missing.value.status == 404 and missing.value.message == "not_found!"
    with Client("http://127.0.0.1:9", retries=0) as c, pytest.raises(ConnectionFailed):
        c.get("j1")


def _stream_answers() -> list[Callable[[httpx.Request], httpx.Response]]:
    first = sse((1, "status", {"status": "queued"}), (2, "status", {"status": "running"}))
    rest = sse((3, "progress", {"step": 1, "total": 1}), (4, "status", {"status": "succeeded"}))
    return [lambda r: httpx.Response(200, stream=Dropped(first),
                                     headers={"content-type": "text/event-stream"}),
            lambda r: httpx.Response(200, content=rest,
                                     headers={"content-type": "text/event-stream"})]


def test_events_resume_after_a_dropped_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module.time, "sleep", lambda s: None)
    seen: list[httpx.Request] = []
    with Client("http://convoy", transport=scripted(_stream_answers(), seen)) as c:
        events = list(c.events("j1"))
    assert [e.id for e in events] == [1, 2, 3, 4] and events[-1].final
    assert "last-event-id" not in seen[0].headers and seen[1].headers["last-event-id"] == "2"


def test_async_events_resume_after_a_dropped_stream() -> None:
    seen: list[httpx.Request] = []

    async def follow() -> list[Event]:
        async with AsyncClient("http://convoy", transport=scripted(_stream_answers(), seen)) as c:
            return [e async for e in c.events("j1")]

    events = asyncio.run(follow())
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert seen[1].headers["last-event-id"] == "2"


def test_the_async_client_lists_workers() -> None:
    seen: list[httpx.Request] = []
    listing = {"workers": [{"id": "w1", "device": "cpu", "models": ["lenet5-digits"]}]}

    async def workers() -> list[str]:
        answers = [lambda r: httpx.Response(200, json=listing)]
        async with AsyncClient("http://convoy", transport=scripted(answers, seen)) as c:
            return [w.id for w in await c.workers()]

    assert asyncio.run(workers()) == ["w1"]
    assert seen[0].url.path == "/v1/workers"


@pytest.mark.slow
def test_a_job_life_through_the_sdk(service: Service, tmp_path: Path) -> None:
    images, labels = digit_images(2)
    with Client(service.url) as c:
        assert c.health() and c.ready()["ready"] is True
        assert any(m.name == "lenet5-digits" and m.labels for m in c.models())
        assert c.workers() and c.model("lenet5-digits").input.channels == 1
        job = c.run("classify", "lenet5-digits", {"image": images[0], "top_k": 2}, timeout=60)
        assert job.status == "succeeded" and isinstance(job.output, ClassifyOutput)
        assert job.output.predictions[0].label == str(labels[0])
        second = c.wait(c.submit("classify", "lenet5-digits", {"image": images[1]}).id, 60)
        ids = [j.id for j in c.iter_jobs(kind="classify", page_size=1)]
        assert ids.index(second.id) < ids.index(job.id) and len(ids) == len(set(ids))
        assert c.list(kind="classify", limit=1).next_cursor is not None

        gen = c.submit("generate", "tiny-ddpm", {"n": 2, "seed": 5, "steps": 2})
        events = list(c.events(gen.id))
        assert events[-1].final and [e.id for e in events] == sorted({e.id for e in events})
        for event in events:  # each payload is the documented one (StatusEvent, ...)
            event.payload()
        assert {"status", "progress", "output"} <= {e.type for e in events}
        ImagesOutput.model_validate(next(e.data for e in events if e.type == "output"))
        resumed = list(c.events(gen.id, last_event_id=events[-2].id))
        assert [e.id for e in resumed] == [events[-1].id]
        done = c.wait(gen.id, 60)
        assert isinstance(done.output, ImagesOutput) and done.status == "succeeded"
        paths = c.download(done, tmp_path)
        assert [p.name for p in paths] == ["image-0.png", "image-1.png"]
        assert paths[0].read_bytes().startswith(b"\x89PNG")

        parked = c.submit("generate", "parked", {"steps": 2})
        assert c.cancel(parked.id).status == "canceled"
        with pytest.raises(NotFound):
            c.artifact(done.id, "nope.png")


@pytest.mark.slow
def test_the_async_client_runs_a_job(service: Service) -> None:
    async def go() -> tuple[JobRecord, list[str], list[str]]:
        async with AsyncClient(service.url) as c:
            job = await c.run("generate", "tiny-ddpm", {"n": 1, "seed": 9, "steps": 2},
                              timeout=120)
            listed = [j.id async for j in c.iter_jobs(kind="generate", page_size=2)]
            return job, listed, [m.name for m in await c.models()]

    job, listed, models = asyncio.run(go())
    assert "tiny-ddpm" in models
    assert job.status == "succeeded" and isinstance(job.output, ImagesOutput)
    assert job.output.images[0].seed == 9 and job.id in listed
