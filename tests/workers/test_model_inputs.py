"""Each kind's input schema as one model serves it (what the studio builds its forms from):
bounded by the model's limits, its labels the only classes, no field the model refuses,
and every default a submission the server accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.catalog import Catalog, ModelEntry
from service.app import create_app
from tests.helpers import b64_png
from workers.contract import INPUTS, check
from workers.model_inputs import model_inputs, takes_prompt
from workers.settings import Settings

CATALOG = Catalog.load()


def props(model: str, kind: str) -> dict[str, Any]:
    return model_inputs(CATALOG.get(model))[kind]["properties"]


def test_class_conditional_generator_takes_its_classes_and_no_prompt() -> None:
    p = props("ddpm-digits", "generate")
    entry = CATALOG.get("ddpm-digits")
    assert p["class_label"]["enum"] == entry.labels
    assert "prompt" not in p and "negative_prompt" not in p and "height" not in p
    assert p["steps"]["maximum"] == entry.limits.max_steps
    assert p["n"]["maximum"] == entry.limits.max_n
    assert p["guidance_scale"]["default"] == entry.config["guidance_scale"]
    assert set(p["scheduler"]["enum"]) == {"ddpm", "ddim", "dpmpp", "euler"}


def test_only_a_model_with_an_encoder_offers_an_interpolation_path() -> None:
    assert "interpolate_between" in props("vae-digits", "sample")
    assert "class_label" not in props("vae-digits", "sample")  # no labels: unconditional
    gan = props("dcgan-digits", "sample")
    assert "interpolate_between" not in gan and "steps" not in gan
    assert gan["class_label"]["enum"] == [str(i) for i in range(10)]


def test_top_k_is_bounded_by_the_labels() -> None:
    p = props("resnet18-shapes", "classify")
    assert p["top_k"]["maximum"] == 4 and p["top_k"]["default"] == 4
    assert p["image"]["contentMediaType"] == "image/*"
    assert model_inputs(CATALOG.get("resnet18-shapes"))["classify"]["required"] == ["image"]


def test_a_text_to_image_pipeline_requires_a_prompt(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"]}))
    entry = ModelEntry(name="sd", family="diffusers", kinds=["generate"], path=tmp_path,
                       limits={"max_side": 512, "max_prompt_chars": 300})
    assert takes_prompt(entry)
    schema = model_inputs(entry)["generate"]
    assert schema["required"] == ["prompt"]
    assert schema["properties"]["height"]["maximum"] == 512
    assert schema["properties"]["prompt"]["maxLength"] == 300
    assert "class_label" not in schema["properties"] and "guidance_scale" in schema["properties"]
    unconditional = ModelEntry(name="u", family="diffusers", kinds=["generate"], path=tmp_path / "x")
    assert not takes_prompt(unconditional)
    assert "guidance_scale" not in model_inputs(unconditional)["generate"]["properties"]


@pytest.mark.parametrize("entry", list(CATALOG), ids=lambda e: e.name)
def test_defaults_and_upper_bounds_are_accepted(entry: ModelEntry) -> None:
    image = b64_png(np.zeros((4, 4, 3), dtype=np.uint8))
    for kind, schema in model_inputs(entry).items():
        data: dict[str, Any] = {}
        for name, p in schema["properties"].items():
            if p.get("contentMediaType"):
                data[name] = image
            elif p.get("type") == "integer" and "maximum" in p:
                data[name] = p["maximum"]
            elif p.get("enum"):
                data[name] = p["enum"][-1]
            elif name in schema["required"] and p.get("examples"):
                data[name] = p["examples"][0]
            elif p.get("default") is not None:
                data[name] = p["default"]
        validated = INPUTS[kind](**data).model_dump()
        check(kind, validated, entry, 4096 * 4096)


def test_models_listing_and_offline_docs(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed["unet-shapes"]["inputs"]["segment"]["required"] == ["image"]
    assert client.get("/v1/models/vae-digits").json()["inputs"].keys() == {"reconstruct", "sample"}
    for page, asset in (("/docs", "/docs-assets/swagger-ui-bundle.js"),
                        ("/redoc", "/docs-assets/redoc.standalone.js")):
        html = client.get(page).text
        assert asset in html and "https://" not in html
        bundle = client.get(asset)
        assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert "cdn.redoc.ly" not in client.get("/docs-assets/redoc.standalone.js").text
    index = client.get("/").text
    assert "/studio/js/studio.js" in index and "https://" not in index
    for asset in ("studio.css", "js/studio.js", "js/api.js", "js/form.js", "js/results.js",
                  "js/panels.js"):
        body = client.get(f"/studio/{asset}").text
        assert "http://" not in body and "https://" not in body, asset
    assert client.get("/v1/workers").json() == {"workers": [], "queued": 0}
