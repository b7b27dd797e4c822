"""What ``generate`` inputs a model accepts at submission: images, masks and adapters are
checked against the catalog entry before a job is stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.contract import GenerateInput, check
from core.errors import InvalidInput
from models.catalog import LoraSpec, ModelEntry
from tests.helpers import b64_png


def pipeline_entry(tmp_path: Path, class_name: str, **extra: object) -> ModelEntry:
    folder = tmp_path / class_name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return ModelEntry(name="m", family="diffusers", kinds=["generate"], path=folder, **extra)  # type: ignore[arg-type]


def submit(entry: ModelEntry, **fields: object) -> dict:
    data = GenerateInput(prompt="x", **fields).model_dump()  # type: ignore[arg-type]
    return check("generate", data, entry, 10_000)


IMAGE = b64_png(np.zeros((16, 16, 3), dtype=np.uint8))
MASK = b64_png(np.full((16, 16), 255, dtype=np.uint8))


def test_a_mask_for_a_model_without_inpainting_names_the_reason(tmp_path: Path) -> None:
    dit = pipeline_entry(tmp_path, "DiTPipeline")
    with pytest.raises(InvalidInput, match="cannot do inpainting: DiTPipeline has no inpainting"):
        submit(dit, image=IMAGE, mask=MASK)
    with pytest.raises(InvalidInput, match="cannot do image-to-image"):
        submit(dit, image=IMAGE)
    sd = pipeline_entry(tmp_path, "StableDiffusionPipeline")
    assert submit(sd, image=IMAGE, mask=MASK, strength=0.5)["strength"] == 0.5
    ddpm = ModelEntry(name="d", family="ddpm", kinds=["generate"])
    submit(ddpm, image=IMAGE, mask=MASK)
    vae_like = ModelEntry(name="g", family="dcgan", kinds=["generate"])
    with pytest.raises(InvalidInput, match="generates from noise only"):
        submit(vae_like, image=IMAGE)


def test_mask_and_image_must_match_and_strength_needs_an_image(tmp_path: Path) -> None:
    sd = pipeline_entry(tmp_path, "StableDiffusionPipeline")
    small = b64_png(np.zeros((8, 16), dtype=np.uint8))
    with pytest.raises(InvalidInput, match="the mask is 16x8 and the image 16x16"):
        submit(sd, image=IMAGE, mask=small)
    with pytest.raises(InvalidInput, match="needs the image"):
        submit(sd, mask=MASK)
    with pytest.raises(InvalidInput, match="strength applies"):
        submit(sd, strength=0.5)


def test_adapters_must_be_declared_once_each(tmp_path: Path) -> None:
    plain = pipeline_entry(tmp_path, "StableDiffusionPipeline")
    with pytest.raises(InvalidInput, match="declares no adapters"):
        submit(plain, loras=[{"name": "a"}])
    spec = LoraSpec(path=tmp_path / "a.safetensors")
    entry = plain.model_copy(update={"loras": {"a": spec, "b": spec}})
    submit(entry, loras=[{"name": "a", "scale": 0.5}, {"name": "b"}])
    with pytest.raises(InvalidInput, match="unknown LoRA adapters"):
        submit(entry, loras=[{"name": "c"}])
    with pytest.raises(InvalidInput, match="named twice"):
        submit(entry, loras=[{"name": "a"}, {"name": "a", "scale": 2}])
    with pytest.raises(ValueError, match="safetensors"):
        LoraSpec(path=tmp_path / "a.bin")


def test_listed_inputs_offer_only_the_edits_a_model_can_do(tmp_path: Path) -> None:
    from core.model_inputs import kind_schema

    ddpm = ModelEntry(name="d", family="ddpm", kinds=["generate"], labels=["0", "1"])
    dit = pipeline_entry(tmp_path, "DiTPipeline")
    spec = LoraSpec(path=tmp_path / "a.safetensors")
    sd = pipeline_entry(tmp_path, "StableDiffusionPipeline", loras={"ink": spec})
    of_ddpm, of_dit = (set(kind_schema("generate", e)["properties"]) for e in (ddpm, dit))
    assert {"image", "mask", "strength"} <= of_ddpm and "loras" not in of_ddpm
    assert not {"image", "mask", "strength", "loras"} & of_dit
    lora = kind_schema("generate", sd)["properties"]["loras"]
    assert lora["items"]["properties"]["name"]["enum"] == ["ink"]
