"""Webhooks that are sent: a job's events become signed deliveries to its URL.

Every worker process runs one ``WebhookSender`` thread. Each round it

1. reads the new events of the watched jobs (``workers/outbox.py``) and turns those the job
   asked for into deliveries: ``start`` (running), ``progress`` (the latest of the round),
   ``output`` and ``completed`` (a final status). The delivery id is made of the job id and
   the event's sequence number, so a round repeated after a crash adds nothing;
2. claims due deliveries and POSTs them (``workers/webhook_net.py``: no SSRF), signed by the
   Standard Webhooks scheme with the owner's secret;
3. records each attempt as a ``webhook`` event on the job, and either settles the delivery
   or schedules the next attempt with exponential backoff and jitter, until
   ``webhook_retry_for_s`` after the first.

Workers share the work through the outbox: enqueueing is idempotent and claims are leased.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from workers.outbox import Delivery, Outbox, open_outbox
from workers.settings import Settings
from workers.store.base import TERMINAL, Event, Job, JobStore, StoreUnavailable, now_iso
from workers.webhook_net import Connector, Refused, Resolver, connect, networks, post, resolve

log = logging.getLogger(__name__)
EVENTS = ("start", "progress", "output", "completed")
DEFAULT_EVENTS = ("completed",)
FORGET_UNCREATED_S = 600.0  # a watched id with no job this long after: its submission failed
SENDERS = 4  # deliveries sent at once by one process


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header: 'v1,' + base64(HMAC-SHA256(key, id.timestamp.body))."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def event_name(event: Event) -> str | None:
    """The webhook event a job event stands for (None: it is not sent)."""
    if event.type == "status":
        status = event.data.get("status")
        if status == "running":
            return "start"
        return "completed" if status in TERMINAL else None
    return event.type if event.type in ("progress", "output") else None


def deliveries_for(job: Job, events: list[Event]) -> list[Delivery]:
    """The deliveries of a job's new events, for the events the job asked for."""
    wanted = set(job.webhook_events or DEFAULT_EVENTS)
    picked: list[tuple[str, Event]] = []
    for event in events:
        name = event_name(event)
        if name is None or name not in wanted:
            continue
        if name == "progress" and picked and picked[-1][0] == "progress":
            picked[-1] = (name, event)  # only the latest step of a round
        else:
            picked.append((name, event))
    record = job.public()
    out = []
    for name, event in picked:
        body = {"type": f"job.{name}", "timestamp": now_iso(), "data": record,
                "event": {"seq": event.seq, "type": event.type, "data": event.data}}
        out.append(Delivery(id=f"msg_{job.id}_{event.seq}", job_id=job.id, event=name,
                            url=str(job.webhook), owner=job.owner,
                            body=json.dumps(body, separators=(",", ":"))))
    return out


class WebhookSender:
    def __init__(self, settings: Settings, store: JobStore, outbox: Outbox | None = None,
                 resolver: Resolver = resolve, connector: Connector = connect) -> None:
        self.settings = settings
        self.store = store
        self.outbox = outbox or open_outbox(store)
        self.allow = networks(settings.webhook_allow)
        self.resolver, self.connector = resolver, connector
        self.lease_s = settings.webhook_connect_timeout_s + settings.webhook_read_timeout_s + 5.0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="convoy-webhook")

    # -- events → deliveries ---------------------------------------------------------------
    def collect(self) -> int:
        """Turn the watched jobs' new events into deliveries; returns how many were new."""
        new = 0
        for job_id, cursor, since in self.outbox.watched():
            events = self.store.events(job_id, cursor)
            job = self.store.get(job_id)
            if job is None:
                if time.time() - since > FORGET_UNCREATED_S or cursor > 0:
                    self.outbox.advance(job_id, cursor, done=True)  # never made, or expired
                continue
            if not job.webhook:
                self.outbox.advance(job_id, cursor, done=True)
                continue
            if not events:
                continue
            new += self.outbox.enqueue(deliveries_for(job, events))
            done = any(event_name(e) == "completed" for e in events)
            self.outbox.advance(job_id, events[-1].seq, done=done)
        return new

    # -- sending ---------------------------------------------------------------------------
    def send_due(self) -> int:
        """Claim the due deliveries and attempt each once; returns how many were attempted."""
        due = self.outbox.claim_due(64, self.lease_s)
        list(self._pool.map(self.attempt, due))
        return len(due)

    def attempt(self, d: Delivery) -> None:
        """One attempt at a delivery, recorded on the outbox and as a ``webhook`` event."""
        d.attempts += 1
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "convoy-webhooks/1",
                   "webhook-id": d.id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(self.outbox.secret(d.owner), d.id, timestamp,
                                             d.body)}
        status: int | None = None
        error: str | None = None
        try:
            reply = post(d.url, d.body.encode(), headers, self.allow,
                         connect_timeout=self.settings.webhook_connect_timeout_s,
                         read_timeout=self.settings.webhook_read_timeout_s,
                         resolver=self.resolver, connector=self.connector)
            status = reply.status
            if not 200 <= status < 300:
                error = f"the receiver answered {status}"
        except Refused as e:
            error = f"refused: {e}"
        except OSError as e:
            error = f"{type(e).__name__}: {e}"[:300]
        now = time.time()
        retry_in = None
        if error is None:
            state = "delivered"
        elif error.startswith("refused"):
            state = "failed"  # the address will not become callable by waiting
        else:
            base = self.settings.webhook_backoff_s * 2 ** (d.attempts - 1)
            retry_in = min(self.settings.webhook_backoff_max_s, base) * random.uniform(0.5, 1.0)
            over = now + retry_in - d.first_at > self.settings.webhook_retry_for_s
            state = "failed" if over else "pending"
        self.outbox.settle(d, state, now + retry_in if state == "pending" else None)
        note: dict[str, Any] = {"id": d.id, "event": d.event, "attempt": d.attempts,
                                "state": state, "status_code": status, "error": error}
        if state == "pending":
            note["retry_in_s"] = round(retry_in or 0.0, 3)
        try:
            self.store.append_event(d.job_id, "webhook", note)
        except (KeyError, StoreUnavailable):
            pass  # the job expired, or the store is down: the outbox holds the outcome
        log.info("webhook %s attempt %d: %s", d.id, d.attempts, error or status)

    # -- the thread ------------------------------------------------------------------------
    def run_once(self) -> int:
        self.collect()
        return self.send_due()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except StoreUnavailable as e:
                log.warning("webhooks: store unavailable (%s)", e)
            except Exception:
                log.exception("webhooks: round failed")
            self._stop.wait(self.settings.webhook_poll_s)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="convoy-webhooks", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False)
