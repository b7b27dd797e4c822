"""What routes depend on: the app's state, and the caller's identity."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from models.catalog import Catalog
from service.lifecycle import Lifecycle
from service.limits import OpenPerKey, RateLimiter
from service.streams import EventHub
from service.submitter import Submitter
from service.waiters import Waiters
from workers.blobs import BlobStore
from workers.errors import Unauthorized
from workers.outbox import Outbox
from workers.settings import Settings
from workers.store import JobStore
from workers.user_models import UserModels

LOCAL_OWNER = "local"


@dataclass
class State:
    settings: Settings
    store: JobStore
    catalog: Catalog
    celery: Celery
    keys: dict[str, str]  # API key -> owner
    limiter: RateLimiter
    waiters: Waiters
    submitter: Submitter
    outbox: Outbox
    lifecycle: Lifecycle
    hub: EventHub  # the one reader of event logs behind streams and waits
    open_per_key: OpenPerKey  # event streams and waits open per API key
    blobs: BlobStore  # inputs, previews and outputs
    user_models: UserModels  # the runtime catalog: fine-tuned models, per owner


# The dependencies are async (they never block) so that FastAPI runs them on the event loop
# rather than handing each to a worker thread.
async def get_state(request: Request) -> State:
    state: State = request.app.state.convoy
    return state


StateDep = Annotated[State, Depends(get_state)]


@dataclass(frozen=True)
class Caller:
    owner: str
    key: str  # the rate limit's bucket: the API key (or the owner when keys are off)


async def get_caller(request: Request, state: StateDep) -> Caller:
    """The owner behind ``Authorization: Bearer <key>`` (everyone is 'local' without keys)."""
    if not state.keys:
        return Caller(LOCAL_OWNER, LOCAL_OWNER)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send Authorization: Bearer <API key>")
    for key, owner in state.keys.items():
        if hmac.compare_digest(key.encode(), token.strip().encode()):
            return Caller(owner, key)
    raise Unauthorized("unknown API key")


CallerDep = Annotated[Caller, Depends(get_caller)]
