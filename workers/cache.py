"""Models load once per process and stay; a memory budget unloads the least recently used."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.catalog import ModelEntry
    from models.predictor import Predictor

log = logging.getLogger(__name__)


def parse_budget(value: str | None, total_bytes: int | None) -> int | None:
    """'2GB', '512MB', '1000000' (bytes) or '0.8' (a fraction of the device's memory)."""
    if not value:
        return None
    v = value.strip().upper()
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "B": 1}
    for unit, factor in units.items():
        if v.endswith(unit):
            return int(float(v[: -len(unit)]) * factor)
    number = float(v)
    if number <= 1.0:
        if total_bytes is None:
            raise ValueError(f"a fractional memory budget ({value}) needs a device with known memory")
        return int(number * total_bytes)
    return int(number)


class ModelCache:
    """Predictors by model name, loaded on first use on this process's device."""

    def __init__(self, device: Any, budget_bytes: int | None = None) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[str, Predictor] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, entry: ModelEntry) -> Predictor:
        with self._lock:
            if entry.name in self._models:
                self._models.move_to_end(entry.name)
                return self._models[entry.name]
            load_lock = self._loading.setdefault(entry.name, threading.Lock())
        with load_lock:  # one load per model, other threads wait for it
            with self._lock:
                if entry.name in self._models:
                    return self._models[entry.name]
            predictor = self._load(entry)
            size = predictor.memory_bytes()
            with self._lock:
                self._make_room(size)
                self._models[entry.name] = predictor
                self._sizes[entry.name] = size
            return predictor

    def _load(self, entry: ModelEntry) -> Predictor:
        from models.registry import get_predictor_class

        log.info("loading %s (%s) on %s", entry.name, entry.family, self.device)
        predictor: Predictor = get_predictor_class(entry.family)(entry, self.device)
        predictor.load()
        return predictor

    def _make_room(self, size: int) -> None:
        if self.budget_bytes is None:
            return
        while self._models and sum(self._sizes.values()) + size > self.budget_bytes:
            name, _ = self._models.popitem(last=False)
            self._sizes.pop(name, None)
            log.info("unloading %s (least recently used) to stay within the memory budget", name)
            _free_device_memory()

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def memory_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
