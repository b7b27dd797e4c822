"""``/v1/models`` and ``/v1/workers``. The models are the file catalog's and the caller's
own fine-tuned ones (the runtime catalog, ``core/user_models.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from core.errors import Conflict, NotFound
from core.model_inputs import model_inputs
from core.store.base import StoreUnavailable
from core.user_models import entry_of, model_prefix
from models.catalog import ModelNotFound
from service.deps import CallerDep, StateDep
from service.errors import V1_ERRORS, error_responses
from service.schemas import ModelInfo, ModelList, WorkerList

router = APIRouter(prefix="/v1", tags=["models"], responses=V1_ERRORS)


@router.get("/models", operation_id="listModels", response_model=ModelList)
def list_models(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The models this service serves, with their kinds, labels, input size, limits,
    held-out metrics, and ``inputs``: the JSON schema of each kind's input as this model
    takes it. While the store does not answer, the file catalog's models are still listed,
    with ``partial`` true: the caller's fine-tuned models are missing from that listing."""
    catalog = [{**e.public(), "inputs": model_inputs(e)} for e in state.catalog]
    try:
        records = state.user_models.list(caller.owner)
    except StoreUnavailable:  # the file catalog needs no store: list it, and say what is missing
        return {"models": catalog, "partial": True}
    own = [_own(r) for r in records if r["name"] not in state.catalog.entries]
    return {"models": catalog + own, "partial": False}


def _own(record: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuned model as the listing shows it: an entry, plus where it came from."""
    entry = entry_of(record)
    return {**entry.public(), "inputs": model_inputs(entry), "owned": True,
            "base_model": record["base_model"], "mode": record["mode"],
            "job_id": record["job_id"], "created_at": record["created_at"]}


@router.get("/models/{name}", operation_id="getModel", response_model=ModelInfo)
def get_model(name: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """One model (404 for an unknown name, and for another key's fine-tuned model)."""
    if name in state.catalog.entries:
        entry = state.catalog.get(name)
        return {**entry.public(), "inputs": model_inputs(entry)}
    record = state.user_models.get(caller.owner, name)
    if record is None:
        raise ModelNotFound(name)
    return _own(record)


@router.delete("/models/{name}", status_code=204, operation_id="deleteModel",
               response_class=Response, responses=error_responses(409))
def delete_model(name: str, state: StateDep, caller: CallerDep) -> Response:
    """Delete one of the caller's fine-tuned models and its weights (404 for another key's;
    409 for a catalog model, which only its catalog file removes). Jobs queued on it fail."""
    if name in state.catalog.entries:
        raise Conflict(f"{name!r} is a catalog model: remove it from its catalog file")
    record = state.user_models.get(caller.owner, name)
    if record is None or not state.user_models.delete(caller.owner, name):
        raise NotFound(f"no model {name!r}")
    state.blobs.delete_prefix(model_prefix(record["job_id"]))
    return Response(status_code=204)


@router.get("/workers", tags=["workers"], operation_id="listWorkers", response_model=WorkerList)
def list_workers(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Live workers: device, loaded models, memory in use, jobs done."""
    workers = state.store.workers()
    for w in workers:
        w.pop("stats", None)
    return {"workers": workers, "queued": state.store.count_queued()}
