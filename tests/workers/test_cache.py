"""The model cache: one load per model and process, least recently used out first under a
memory budget, budgets in bytes or as a fraction of the device."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest
import torch

from models.catalog import ModelEntry
from models.predictor import Predictor, Request, StepCallback
from models.registry import register_predictor
from workers.cache import ModelCache, parse_budget

MB = 1 << 20


@register_predictor("test-sized")
class Sized(Predictor):
    """Holds ``config.mb`` megabytes of parameters; counts its loads."""

    kinds = ("generate",)
    loads: ClassVar[list[str]] = []

    def load(self) -> None:
        time.sleep(0.05)  # long enough for concurrent first requests to overlap
        Sized.loads.append(self.entry.name)
        self.weights = torch.nn.Linear(1, int(self.entry.config["mb"] * MB / 4), bias=False)

    def modules_for_memory(self) -> list[torch.nn.Module]:
        return [self.weights]

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        return [{} for _ in batch]


def sized(name: str, mb: float) -> ModelEntry:
    return ModelEntry(name=name, family="test-sized", kinds=["generate"], config={"mb": mb})


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Sized.loads.clear()


def test_least_recently_used_model_is_unloaded_when_a_new_one_does_not_fit() -> None:
    cache = ModelCache(torch.device("cpu"), budget_bytes=int(2.5 * MB))
    a, b, c = sized("a", 1), sized("b", 1), sized("c", 1)
    first_a = cache.get(a)
    cache.get(b)
    assert cache.loaded() == ["a", "b"] and cache.memory_bytes() == 2 * MB
    assert cache.get(a) is first_a  # a stays loaded, and is now the most recently used
    cache.get(c)
    assert cache.loaded() == ["a", "c"]  # b went: least recently used
    assert cache.memory_bytes() == 2 * MB
    cache.get(b)  # loads again, and a (least recent now) makes room
    assert cache.loaded() == ["c", "b"]
    assert Sized.loads == ["a", "b", "c", "b"]


def test_a_model_larger_than_the_budget_still_loads_alone() -> None:
    cache = ModelCache(torch.device("cpu"), budget_bytes=2 * MB)
    cache.get(sized("small", 1))
    cache.get(sized("big", 3))
    assert cache.loaded() == ["big"]


def test_without_a_budget_everything_stays_and_each_model_loads_once() -> None:
    cache = ModelCache(torch.device("cpu"))
    entries = [sized(n, 0.5) for n in "abc"]
    threads = [threading.Thread(target=cache.get, args=(e,)) for e in entries * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(Sized.loads) == ["a", "b", "c"]  # twelve concurrent asks, three loads
    assert sorted(cache.loaded()) == ["a", "b", "c"]


@pytest.mark.parametrize(("value", "total", "expected"), [
    ("2GB", None, 2 << 30), ("512MB", None, 512 << 20), ("1000000", None, 1_000_000),
    ("0.5", 8 << 30, 4 << 30), (None, None, None), ("", 8 << 30, None),
])
def test_memory_budgets_read_as_bytes_or_a_fraction(value: str | None, total: int | None,
                                                    expected: int | None) -> None:
    assert parse_budget(value, total) == expected


def test_a_fractional_budget_needs_a_device_of_known_size() -> None:
    with pytest.raises(ValueError, match="known memory"):
        parse_budget("0.8", None)
