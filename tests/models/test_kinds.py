"""The kinds and the registries derive from the code: a kind is its schema file in
``models/kinds``; a predictor family, an architecture or a trainer is found from its
decorator, with no list kept by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import models.kinds
from models import registry
from models.catalog import Catalog
from models.kinds import KIND_SPECS, KINDS, _discover

ROOT = Path(__file__).resolve().parents[2]
ECHO = '''
from models.kinds.common import Args, Input, Kind


class EchoInput(Input):
    text: str


class EchoArgs(Args):
    text: str


KIND = Kind("echo", EchoInput, EchoArgs, example={"model": "echo", "input": {"text": "hi"}})
'''


def test_kinds_are_the_schema_files_and_everything_lists_them() -> None:
    files = {p.stem for p in Path(models.kinds.__file__).parent.glob("*.py")} - {
        "__init__", "common"}
    assert set(KINDS) == files
    from service.schemas import Kind
    from workers.contract import INPUTS, JOBS

    assert set(typing.get_args(Kind)) == set(INPUTS) == set(JOBS) == set(KINDS)
    for name, kind in KIND_SPECS.items():
        assert JOBS[name].model_fields["input"].annotation is kind.input


def test_a_new_schema_file_is_a_new_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "echo.py").write_text(ECHO)
    monkeypatch.setattr(models.kinds, "__path__", [*models.kinds.__path__, str(tmp_path)])
    try:
        found = _discover()
    finally:
        sys.modules.pop("models.kinds.echo", None)
    assert set(found) == set(KINDS) | {"echo"}
    assert found["echo"].args(text="hi").text == "hi"


def test_every_registered_name_is_found_from_its_decorator() -> None:
    index = registry._index()
    assert set(index["register_predictor"]) >= {
        e.family for e in Catalog.load()} | {"diffusers", "torchvision"}
    assert "models.pipelines" in index["register_predictor"]["diffusers"]
    assert set(registry.list_models()) == set(index["register_model"])
    assert set(registry.list_trainers()) == set(index["register_trainer"])
    with pytest.raises(ValueError, match="no predictor for family 'nope'"):
        registry.get_predictor_class("nope")


def test_serving_a_classifier_imports_its_own_family_only() -> None:
    probe = ("import json, sys\nfrom models.registry import get_predictor_class\n"
             "get_predictor_class('lenet5')\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('models.', "
             "'diffusers', 'transformers')))))")
    done = subprocess.run([sys.executable, "-c", probe], check=False, cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout)
    assert "models.classification.predictor" in loaded
    assert not [m for m in loaded if m.startswith(("diffusers", "transformers", "models.pipelines",
                                                    "models.training"))], loaded
