"""``/v1/models`` and ``/v1/workers``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import CallerDep, StateDep
from service.errors import V1_ERRORS
from service.schemas import ModelInfo, ModelList, WorkerList
from workers.model_inputs import model_inputs

router = APIRouter(prefix="/v1", tags=["models"], responses=V1_ERRORS)


@router.get("/models", operation_id="listModels", response_model=ModelList)
def list_models(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The models this service serves, with their kinds, labels, input size, limits,
    held-out metrics, and ``inputs``: the JSON schema of each kind's input as this model
    takes it."""
    return {"models": [{**e.public(), "inputs": model_inputs(e)} for e in state.catalog]}


@router.get("/models/{name}", operation_id="getModel", response_model=ModelInfo)
def get_model(name: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """One model (404 for an unknown name)."""
    entry = state.catalog.get(name)
    return {**entry.public(), "inputs": model_inputs(entry)}


@router.get("/workers", tags=["workers"], operation_id="listWorkers", response_model=WorkerList)
def list_workers(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Live workers: device, loaded models, memory in use, jobs done."""
    workers = state.store.workers()
    for w in workers:
        w.pop("stats", None)
    return {"workers": workers, "queued": state.store.count_queued()}
