"""Small registries, in the manner of torchvision's ``models/_api.py``.

Architectures: ``register_model(name)`` decorates a builder ``fn(**config) -> nn.Module``;
``get_model(name, **config)`` builds one; ``list_models()`` names them.
Predictors: ``register_predictor(*families)`` decorates a ``Predictor`` class serving the
catalog families named; ``get_predictor_class(family)`` finds it.
Trainers: ``register_trainer(name)`` decorates ``fn(out_dir, *, seed, quick) -> metrics``.
A duplicate or unknown name raises ``ValueError`` naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_MODELS: dict[str, Callable[..., Any]] = {}
_PREDICTORS: dict[str, type] = {}
_TRAINERS: dict[str, Callable[..., Any]] = {}

# Modules whose import registers architectures, predictors and trainers. Imported lazily so
# that `import models.registry` stays cheap.
_MODULES = [
    "models.classification.lenet",
    "models.classification.predictor",
    "models.classification.alexnet",
    "models.classification.vgg",
    "models.classification.googlenet",
    "models.classification.resnet",
    "models.classification.torchvision_predictor",
    "models.training.shapes",
    "models.training.digits",
    "models.segmentation.unet",
    "models.segmentation.predictor",
    "models.training.unet",
    "models.vae",
    "models.vae_predictor",
    "models.training.vae",
    "models.gan",
    "models.training.gan_digits",
    "models.diffusion",
    "models.training.ddpm_digits",
    "models.pipelines",
]
_loaded = False

# Where each architecture / predictor family lives, so that serving one model imports its
# own family only (diffusers and transformers are slow to import and most models need neither).
_CLASSIFY = "models.classification.predictor"
_HINTS: dict[str, tuple[str, ...]] = {
    "lenet5": ("models.classification.lenet", _CLASSIFY),
    "alexnet": ("models.classification.alexnet", _CLASSIFY),
    "vgg": ("models.classification.vgg", _CLASSIFY),
    "googlenet": ("models.classification.googlenet", _CLASSIFY),
    "resnet": ("models.classification.resnet", _CLASSIFY),
    "torchvision": ("models.classification.torchvision_predictor",),
    "unet": ("models.segmentation.unet", "models.segmentation.predictor"),
    "vae": ("models.vae", "models.vae_predictor"),
    "dcgan": ("models.gan",),
    "ddpm": ("models.diffusion",),
    "diffusers": ("models.pipelines",),
}


def _load(name: str, table: dict[str, Any]) -> None:
    """Import the modules that register ``name`` (all of them if it is not hinted)."""
    if name in table:
        return
    for module in _HINTS.get(name, ()):
        importlib.import_module(module)
    if name not in table:
        _load_all()


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _MODULES:
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
    _load(name, _MODELS)
    if name not in _MODELS:
        raise ValueError(f"unknown model architecture {name!r}; known: {sorted(_MODELS)}")
    return _MODELS[name](**config)


def list_models() -> list[str]:
    _load_all()
    return sorted(_MODELS)


def register_predictor(*families: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        for family in families:
            _register(_PREDICTORS, "predictor family", family, cls)
        return cls

    return deco


def get_predictor_class(family: str) -> type:
    _load(family, _PREDICTORS)
    if family not in _PREDICTORS:
        raise ValueError(f"no predictor for family {family!r}; known: {sorted(_PREDICTORS)}")
    return _PREDICTORS[family]


def register_trainer(name: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        _register(_TRAINERS, "trainer", name, fn)
        return fn

    return deco


def get_trainer(name: str) -> Callable[..., Any]:
    _load_all()
    if name not in _TRAINERS:
        raise ValueError(f"no trainer for {name!r}; known: {sorted(_TRAINERS)}")
    return _TRAINERS[name]


def list_trainers() -> list[str]:
    _load_all()
    return sorted(_TRAINERS)
