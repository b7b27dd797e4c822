"""Small registries, in the manner of torchvision's ``models/_api.py``.

Architectures: ``register_model(name)`` decorates a builder ``fn(**config) -> nn.Module``;
``get_model(name, **config)`` builds one; ``list_models()`` names them.
Predictors: ``register_predictor(*families)`` decorates a ``Predictor`` class serving the
catalog families named; ``get_predictor_class(family)`` finds it.
Trainers: ``register_trainer(name)`` decorates ``fn(out_dir, *, seed, quick) -> metrics``.
A duplicate or unknown name raises ``ValueError`` naming it.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_MODELS: dict[str, Callable[..., Any]] = {}
_PREDICTORS: dict[str, type] = {}
_TRAINERS: dict[str, Callable[..., Any]] = {}
_ROOT = Path(__file__).parent


@functools.cache
def _index() -> dict[str, dict[str, list[str]]]:
    """Which modules under ``models/`` register which names, read from their decorators
    (``@register_model("vgg")``) without importing them: serving one model then imports its
    own family only (diffusers and transformers are slow to import and most models need
    neither), and a new family or trainer needs no list kept by hand."""
    found: dict[str, dict[str, list[str]]] = {
        "register_model": {}, "register_predictor": {}, "register_trainer": {}}
    for path in sorted(_ROOT.rglob("*.py")):
        source = path.read_text()
        if "@register_" not in source:
            continue
        module = ".".join(path.relative_to(_ROOT.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) \
                        and deco.func.id in found:
                    for arg in deco.args:
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                            found[deco.func.id].setdefault(arg.value, []).append(module)
    return found


def _load(name: str, table: dict[str, Any], registrar: str) -> None:
    """Import the modules that register ``name`` with ``registrar``."""
    if name not in table:
        for module in _index()[registrar].get(name, ()):
            importlib.import_module(module)


def _load_all(registrar: str) -> None:
    for modules in _index()[registrar].values():
        for module in modules:
            importlib.import_module(module)


def _register(table: dict[str, Any], what: str, name: str, obj: Any) -> None:
    if name in table:
        raise ValueError(f"{what} {name!r} is already registered")
    table[name] = obj


def register_model(name: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        _register(_MODELS, "model", name, fn)
        return fn

    return deco


def get_model(name: str, **config: Any) -> Any:
    _load(name, _MODELS, "register_model")
    if name not in _MODELS:
        raise ValueError(f"unknown model architecture {name!r}; known: {sorted(_MODELS)}")
    return _MODELS[name](**config)


def list_models() -> list[str]:
    _load_all("register_model")
    return sorted(_MODELS)


def register_predictor(*families: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        for family in families:
            _register(_PREDICTORS, "predictor family", family, cls)
        return cls

    return deco


def get_predictor_class(family: str) -> type:
    _load(family, _PREDICTORS, "register_predictor")
    if family not in _PREDICTORS:
        raise ValueError(f"no predictor for family {family!r}; known: {sorted(_PREDICTORS)}")
    return _PREDICTORS[family]


def register_trainer(name: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        _register(_TRAINERS, "trainer", name, fn)
        return fn

    return deco


def get_trainer(name: str) -> Callable[..., Any]:
    _load(name, _TRAINERS, "register_trainer")
    if name not in _TRAINERS:
        raise ValueError(f"no trainer for {name!r}; known: {sorted(_TRAINERS)}")
    return _TRAINERS[name]


def list_trainers() -> list[str]:
    _load_all("register_trainer")
    return sorted(_TRAINERS)
