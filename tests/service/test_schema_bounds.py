"""The job schema's bounds are the ceilings of every model's limits: the OpenAPI document
never promises an input that every model refuses, and no catalog may raise a limit past
what the document says."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.contract import ClassifyInput, GenerateInput, SampleInput
from models.catalog import Catalog, Limits


def _maximum(model: type, field: str) -> int:
    schema = model.model_json_schema()["properties"][field]
    options = schema.get("anyOf", [schema])
    return next(o.get("maximum", o.get("maxLength")) for o in options if o.get("type") != "null")


def test_schema_bounds_equal_the_limit_ceilings() -> None:
    ceiling = {name: field.metadata for name, field in Limits.model_fields.items()}
    top = {name: next(m.le for m in meta if hasattr(m, "le")) for name, meta in ceiling.items()}
    assert top == Limits().model_dump()  # the defaults are the ceilings
    assert _maximum(GenerateInput, "n") == _maximum(SampleInput, "n") == top["max_n"] == 16
    assert _maximum(GenerateInput, "steps") == top["max_steps"] == 1000
    assert _maximum(GenerateInput, "height") == _maximum(GenerateInput, "width") == \
        top["max_side"]
    assert _maximum(GenerateInput, "prompt") == top["max_prompt_chars"]
    assert _maximum(ClassifyInput, "top_k") == top["max_top_k"]


def test_a_catalog_cannot_raise_a_limit_past_its_ceiling(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[models.big]\nfamily = "ddpm"\nkinds = ["generate"]\n'
                       "limits = { max_n = 64 }\n")
    with pytest.raises(ValidationError, match="max_n"):
        Catalog.load([catalog], builtin=False)
    catalog.write_text('[models.small]\nfamily = "ddpm"\nkinds = ["generate"]\n'
                       "limits = { max_n = 4 }\n")
    assert Catalog.load([catalog], builtin=False).get("small").limits.max_n == 4
