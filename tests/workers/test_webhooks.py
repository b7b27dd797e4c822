"""Webhook deliveries from the outbox, on SQLite and Redis, to a real receiver on 127.0.0.1:
each event type, signatures checked with the ``standardwebhooks`` library, a receiver that
is down, answers 500 or is slow, and a sender that dies mid-delivery."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.support.jobs import job, put
from tests.support.receiver import Receiver
from workers.outbox import open_outbox
from workers.settings import Settings
from workers.store import Job, JobStore, Outcome
from workers.store.sqlite import SQLiteStore
from workers.webhooks import WebhookSender


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "t.db")
    from workers.store.redis import RedisStore

    return RedisStore(request.getfixturevalue("redis_url"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {"webhook_allow": ["127.0.0.1"], "webhook_backoff_s": 0.2,
                               "webhook_backoff_max_s": 0.5, "webhook_read_timeout_s": 1.0,
                               "webhook_connect_timeout_s": 1.0, "webhook_retry_for_s": 30.0}
    return Settings(**{**base, **kw})  # type: ignore[arg-type]


def submit(store: JobStore, jid: str, url: str, events: list[str] | None = None) -> None:
    open_outbox(store).watch(jid)
    put(store, job(jid, kind="generate", input={"steps": 3}, webhook=url,
                   webhook_events=events or ["completed"]))


def run_job(store: JobStore, jid: str) -> None:
    (claimed,) = store.claim([jid], "w1")
    assert isinstance(claimed, Job)
    store.progress({jid: claimed.token}, 1, 3)
    store.progress({jid: claimed.token}, 2, 3)
    store.finish([Outcome(jid, "succeeded", output={"images": []}, worker="w1")])


def pump(sender: WebhookSender, until: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sender.run_once()
        if until():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("deliveries did not settle")


def test_each_event_type_is_delivered_signed(store: JobStore, receiver: Receiver) -> None:
    sender = WebhookSender(settings(), store)
    submit(store, "j1", receiver.url, ["start", "progress", "output", "completed"])
    run_job(store, "j1")
    pump(sender, lambda: len(receiver.answered) >= 4)
    verifier = Webhook(sender.outbox.secret("alice"))
    bodies = sorted((verifier.verify(r.body, r.headers) for r in receiver.requests),
                    key=lambda b: b["event"]["seq"])  # sent in parallel: order by event seq
    types = [b["type"] for b in bodies]
    # progress events of one round are coalesced: the latest step is sent
    assert types == ["job.start", "job.progress", "job.output", "job.completed"]
    assert bodies[-1]["data"]["status"] == "succeeded" and bodies[-1]["data"]["id"] == "j1"
    assert bodies[1]["event"]["data"] == {"step": 2, "total": 3}
    assert len(set(receiver.ids())) == 4 and set(receiver.ids().values()) == {1}
    tampered = dict(receiver.requests[0].headers, **{"webhook-id": "msg_other"})
    with pytest.raises(Exception, match="signature"):
        verifier.verify(receiver.requests[0].body, tampered)
    attempts = [e.data for e in store.events("j1") if e.type == "webhook"]
    assert [a["state"] for a in attempts] == ["delivered"] * 4
    receiver.figures(f"each-event[{type(store).__name__}]")


def test_only_the_asked_events_are_sent_and_the_default_is_completed(
        store: JobStore, receiver: Receiver) -> None:
    sender = WebhookSender(settings(), store)
    submit(store, "j2", receiver.url)
    run_job(store, "j2")
    pump(sender, lambda: len(receiver.answered) >= 1)
    time.sleep(0.3)
    sender.run_once()
    assert [json.loads(r.body)["type"] for r in receiver.requests] == ["job.completed"]
    assert open_outbox(store).watched() == []  # finished jobs are not followed any more


def test_receiver_down_then_up_is_delivered_once(store: JobStore, receiver: Receiver) -> None:
    sender = WebhookSender(settings(), store)
    receiver.stop()
    submit(store, "j3", receiver.url)
    run_job(store, "j3")
    for _ in range(4):
        sender.run_once()
        time.sleep(0.3)
    failed = [e.data for e in store.events("j3") if e.type == "webhook"]
    assert failed and all(a["state"] == "pending" for a in failed)
    assert len({a["id"] for a in failed}) == 1  # the same webhook-id on every retry
    receiver.start()
    pump(sender, lambda: len(receiver.answered) >= 1)
    for _ in range(3):
        time.sleep(0.3)
        sender.run_once()
    assert receiver.ids() == {f"msg_j3_{failed[0]['id'].rsplit('_', 1)[1]}": 1}
    receiver.figures(f"down-then-up[{type(store).__name__}]")


def test_a_500_is_retried_with_backoff_until_it_succeeds(store: JobStore,
                                                         receiver: Receiver) -> None:
    sender = WebhookSender(settings(), store)
    receiver.status = 500
    submit(store, "j4", receiver.url)
    run_job(store, "j4")
    pump(sender, lambda: len(receiver.requests) >= 3)
    receiver.status = 200
    pump(sender, lambda: len(receiver.answered) >= 1)
    times = [r.at for r in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.08 for g in gaps)  # backoff: at least half the first delay
    assert len(set(receiver.ids())) == 1
    states = [e.data["state"] for e in store.events("j4") if e.type == "webhook"]
    assert states[-1] == "delivered" and states.count("pending") == len(states) - 1
    receiver.figures(f"500-then-200[{type(store).__name__}]")


def test_retries_stop_after_the_bound(store: JobStore, receiver: Receiver) -> None:
    sender = WebhookSender(settings(webhook_retry_for_s=1.0), store)
    receiver.status = 503
    submit(store, "j5", receiver.url)
    run_job(store, "j5")
    pump(sender, lambda: any(e.type == "webhook" and e.data["state"] == "failed"
                             for e in store.events("j5")), timeout=20)
    n = len(receiver.requests)
    time.sleep(1.0)
    sender.run_once()
    assert len(receiver.requests) == n and 2 <= n <= 12


def test_a_slow_receiver_is_retried_under_the_same_id(store: JobStore,
                                                      receiver: Receiver) -> None:
    sender = WebhookSender(settings(webhook_read_timeout_s=0.5), store)
    receiver.delay_s = 1.5
    submit(store, "j6", receiver.url)
    run_job(store, "j6")
    pump(sender, lambda: len(receiver.requests) >= 2)
    receiver.delay_s = 0.0
    pump(sender, lambda: any(e.type == "webhook" and e.data["state"] == "delivered"
                             for e in store.events("j6")))
    assert len(set(receiver.ids())) == 1  # duplicates, if any, carry one webhook-id
    receiver.figures(f"slow[{type(store).__name__}]")


def test_a_sender_that_dies_mid_delivery_leaves_it_to_another(store: JobStore,
                                                               receiver: Receiver) -> None:
    """A claimed delivery whose sender never settles it is sent again after its lease."""
    first = WebhookSender(settings(), store)
    submit(store, "j7", receiver.url)
    run_job(store, "j7")
    first.collect()
    claimed = first.outbox.claim_due(10, lease_s=1.0)  # the first sender dies holding it
    assert len(claimed) == 1
    second = WebhookSender(settings(), store)
    second.run_once()
    assert receiver.requests == []  # leased: not sent twice at once
    time.sleep(1.1)
    pump(second, lambda: len(receiver.answered) == 1)
    assert receiver.ids() == {claimed[0].id: 1}
    receiver.figures(f"sender-died[{type(store).__name__}]")


def test_refused_addresses_fail_without_a_connection(store: JobStore) -> None:
    """A name that resolves to a private address is refused when sent, and not retried."""
    attempts: list[str] = []

    def connector(address: str, port: int, timeout: float) -> object:
        attempts.append(address)
        raise AssertionError("connected")

    sender = WebhookSender(settings(webhook_allow=[]), store,
                           resolver=lambda h, p: ["10.0.0.7"], connector=connector)  # type: ignore[arg-type]
    submit(store, "j8", "http://hooks.internal.test/x")
    run_job(store, "j8")
    pump(sender, lambda: any(e.type == "webhook" for e in store.events("j8")))
    note = next(e.data for e in store.events("j8") if e.type == "webhook")
    assert note["state"] == "failed" and "private" in note["error"] and attempts == []


def test_the_secret_is_per_owner_and_stable(store: JobStore) -> None:
    a, b = open_outbox(store), open_outbox(store)
    assert a.secret("alice") == b.secret("alice") != a.secret("bob")
    assert a.secret("alice").startswith("whsec_")
