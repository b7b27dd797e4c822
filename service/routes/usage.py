"""``/v1/usage``: the caller's device-seconds in the current period, by model, and its
quota."""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter

from core.metering import period_start
from core.settings import limits_of
from service.deps import CallerDep, StateDep
from service.errors import V1_ERRORS
from service.schemas import Usage

router = APIRouter(prefix="/v1", tags=["usage"], responses=V1_ERRORS)


@router.get("/usage", operation_id="getUsage", response_model=Usage)
async def usage(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """Device-seconds the caller's jobs used in the current quota period (each job is
    charged its share of every batch it ran in), by model."""
    period_s = state.settings.quota_period_s
    start = period_start(time.time(), period_s)
    meter = state.lifecycle.meter
    by_model = (await anyio.to_thread.run_sync(meter.owner_seconds, caller.owner, start)
                if meter is not None else {})
    quota = limits_of(state.settings, caller.owner).quota_device_s
    spent = sum(by_model.values())
    return {"owner": caller.owner, "period_start": start, "period_s": period_s,
            "device_s": round(spent, 6), "by_model": {k: round(v, 6) for k, v in by_model.items()},
            "quota_device_s": quota,
            "remaining_device_s": None if quota is None else round(max(0.0, quota - spent), 6)}
