"""The job kinds, one module each: a kind is its schema file here plus a predictor.

A module of this package defines two pydantic models, the ``Input`` a client sends and the
store keeps and the ``Args`` its predictor reads, and names them with an example job in
``KIND`` (``models.kinds.common.Kind``). ``KINDS`` lists what the modules define, so adding
a file is all it takes for the API, the catalog and the worker to know the kind; the
predictor that serves it is found through the catalog entry's family (``models.registry``).
"""

from __future__ import annotations

import importlib
import pkgutil

from models.kinds.common import Kind


def _discover() -> dict[str, Kind]:
    kinds: dict[str, Kind] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "common":
            continue
        kind = importlib.import_module(f"{__name__}.{info.name}").KIND
        if not isinstance(kind, Kind):
            raise TypeError(f"{__name__}.{info.name}.KIND is not a Kind")
        if kind.name in kinds:
            raise ValueError(f"kind {kind.name!r} is defined twice")
        kinds[kind.name] = kind
    return kinds


KIND_SPECS: dict[str, Kind] = _discover()
KINDS: tuple[str, ...] = tuple(KIND_SPECS)
