"""Webhooks at the API: the check of a submitted URL, and the owner's signing secret.

The API never calls a webhook (workers do, ``workers/webhooks.py``); it refuses at
submission what would certainly be refused when sent: a URL that is not http(s) or whose
host is a loopback, private, link-local, multicast or metadata address outside
``CONVOY_WEBHOOK_ALLOW``. Names are resolved only when the delivery is made.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter

from core.errors import InvalidInput
from core.settings import Settings
from core.webhook_net import Refused, check_literal, networks
from service.deps import CallerDep, StateDep
from service.errors import V1_ERRORS
from service.schemas import WebhookSecret

router = APIRouter(prefix="/v1", tags=["webhooks"], responses=V1_ERRORS)


def check_webhook(settings: Settings, url: str | None, events: list[str] | None
                  ) -> dict[str, Any]:
    """The webhook fields to store with a job (none without a webhook); InvalidInput (422)
    for a refused URL."""
    if url is None:
        if events is not None:
            raise InvalidInput("webhook_events needs a webhook")
        return {}
    try:
        check_literal(url, networks(settings.webhook_allow))
    except Refused as e:
        raise InvalidInput(str(e)) from e
    return {"webhook_events": sorted(set(events or ["completed"]))}


@router.get("/webhook-secret", operation_id="getWebhookSecret", response_model=WebhookSecret)
async def webhook_secret(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The secret that signs the caller's webhooks (Standard Webhooks: verify the
    ``webhook-signature`` header with it, e.g. with the ``standardwebhooks`` library)."""
    secret = await anyio.to_thread.run_sync(state.outbox.secret, caller.owner)
    return {"secret": secret, "scheme": "standard-webhooks",
            "headers": ["webhook-id", "webhook-timestamp", "webhook-signature"]}
