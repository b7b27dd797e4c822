"""The job kinds, one module each: a kind is its schema file here plus a predictor.

A module of this package names its kind (``KIND``), an example job (``EXAMPLE``: model and
input) and two pydantic models: the ``Input`` a client sends and the store keeps, and the
``Args`` its predictor reads. ``KINDS`` lists what the modules define, so adding a file is
all it takes for the API, the catalog and the worker to know the kind; the predictor that
serves it is found through the catalog entry's family (``models.registry``).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from models.kinds.common import Args, Input


@dataclass(frozen=True)
class Kind:
    name: str
    input: type[Input]  # the JSON a client sends
    args: type[Args]  # what the predictor reads
    example: dict[str, Any]  # {"model": ..., "input": ...}: the OpenAPI example


def _only(module: ModuleType, base: type) -> Any:
    found = [v for v in vars(module).values()
             if isinstance(v, type) and issubclass(v, base) and v is not base
             and v.__module__ == module.__name__ and v.__name__.endswith(base.__name__)]
    if len(found) != 1:
        raise ValueError(f"{module.__name__} must define one {base.__name__} subclass named "
                         f"*{base.__name__}, found {[c.__name__ for c in found]}")
    return found[0]


def _discover() -> dict[str, Kind]:
    kinds: dict[str, Kind] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "common" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        kind = Kind(module.KIND, _only(module, Input), _only(module, Args), module.EXAMPLE)
        if kind.name in kinds:
            raise ValueError(f"kind {kind.name!r} is defined twice")
        kinds[kind.name] = kind
    return kinds


KIND_SPECS: dict[str, Kind] = _discover()
KINDS: tuple[str, ...] = tuple(KIND_SPECS)
