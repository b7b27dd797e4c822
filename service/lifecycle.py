"""What a job's life adds at the API beyond its record: the submitter's priority and quota
checks, the job's place in the order of its queue, and on the way out its queue position,
ETA and device-seconds.

The routes call three functions (``admit``, ``enqueued``, ``decorate``); the state they
need (the order index, the meter, the estimator) is opened here, beside the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from workers.errors import InvalidInput, RateLimited
from workers.metering import Meter, open_meter, period_start
from workers.queue_eta import QueueEstimator
from workers.queue_order import Entry, QueueOrder, created_at, open_order
from workers.settings import Settings, limits_of
from workers.store import Job, JobStore, StoreUnavailable


@dataclass
class Lifecycle:
    settings: Settings
    order: QueueOrder | None
    meter: Meter | None
    estimator: QueueEstimator | None

    @classmethod
    def open(cls, settings: Settings, store: JobStore) -> Lifecycle:
        order = open_order(store, settings.starvation_s)
        return cls(settings, order, open_meter(store, settings.quota_period_s),
                   QueueEstimator(store, order) if order is not None else None)

    def admit(self, owner: str, priority: int) -> dict[str, Any]:
        """The fields a submission adds to its job; InvalidInput for a priority over the
        owner's bound, RateLimited (429) when the owner's device-second quota is spent."""
        limits = limits_of(self.settings, owner)
        if priority > (limits.max_priority or 0):
            raise InvalidInput(f"priority {priority} is over this key's limit of "
                               f"{limits.max_priority or 0}")
        if limits.quota_device_s is not None and self.meter is not None:
            spent = self.meter.spent(owner)
            if spent >= limits.quota_device_s:
                period = self.settings.quota_period_s
                retry = period_start(time.time(), period) + period - time.time()
                raise RateLimited(f"this key has used {spent:.1f} of its {limits.quota_device_s}"
                                  " device-seconds in this period", retry_after=max(1.0, retry))
        return {"priority": priority}

    def enqueued(self, jobs: list[Job]) -> None:
        """Put jobs about to be recorded in their queues' order (one store step)."""
        if self.order is not None and jobs:
            self.order.add([(j.queue, Entry(j.id, j.priority, created_at(j))) for j in jobs])

    def decorate(self, records: list[dict[str, Any]], jobs: list[Job]
                 ) -> list[dict[str, Any]]:
        """Add queue positions and ETAs (queued jobs) and device-seconds to public records."""
        if self.estimator is not None:
            self.estimator.annotate(records, jobs)
        if self.meter is not None:
            try:
                spent = self.meter.job_seconds([j.id for j in jobs])
            except StoreUnavailable:
                spent = {}
            for record in records:
                record["device_s"] = round(spent[record["id"]], 6) if record["id"] in spent \
                    else None
        return records
