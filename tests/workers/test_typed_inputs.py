"""The worker turns a stored input (JSON, as the client sent it after the catalog checks)
into the typed input its predictor reads: images decoded, the class label as its index,
one seed per image, the model's default guidance filled in."""

from __future__ import annotations

import numpy as np
from PIL import Image

from models.catalog import ModelEntry
from models.kinds.classify import ClassifyArgs
from models.kinds.generate import GenerateArgs, LoraChoice
from models.kinds.sample import SampleArgs
from tests.helpers import b64_png
from workers.contract import prepare

DIGITS = ModelEntry(name="d", family="ddpm", kinds=["generate"], labels=[str(i) for i in range(10)],
                    config={"guidance_scale": 2.5})


def test_generate_input_reaches_the_predictor_typed() -> None:
    stored = {"n": 3, "seed": 2**63 - 2, "class_label": "7", "steps": 10, "scheduler": "ddim",
              "guidance_scale": None, "preview_every": 0, "image": b64_png(np.zeros((8, 8), np.uint8)),
              "mask": None, "strength": 0.5, "loras": [{"name": "ink", "scale": 0.5}]}
    args = prepare("generate", stored, DIGITS, 1 << 20)
    assert isinstance(args, GenerateArgs)
    assert args.seeds == [2**63 - 2, 2**63 - 1, 0] and args.n == 3  # wraps within 63 bits
    assert args.class_index == 7 and args.guidance_scale == 2.5 and args.steps == 10
    assert isinstance(args.image, Image.Image) and args.image.size == (8, 8) and args.mask is None
    assert args.loras == [LoraChoice(name="ink", scale=0.5)] and args.control_image is None


def test_the_other_kinds_too() -> None:
    image = b64_png(np.full((4, 6, 3), 200, np.uint8))
    classify = prepare("classify", {"image": image, "top_k": 2}, DIGITS, 1 << 20)
    assert isinstance(classify, ClassifyArgs) and classify.top_k == 2
    assert classify.image.size == (6, 4)
    sample = prepare("sample", {"n": 2, "seed": 5, "class_label": None, "truncation": 0.5,
                                "interpolate_between": None, "steps": None}, DIGITS, 1 << 20)
    assert isinstance(sample, SampleArgs) and sample.seeds == [5, 6] and sample.n == 2
    assert sample.class_index is None and sample.truncation == 0.5
