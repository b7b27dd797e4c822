"""Step-level batching of diffusers pipelines built from their parts: a tiny Stable
Diffusion pipeline (prompts, guidance, VAE) and a tiny pixel-space DDPM pipeline; each
member's images match the pipeline's own static run to one grey level."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from models.pipelines import PipelinePredictor
from models.predictor import Request
from models.stepping import StepLoop
from tests.models.test_diffusion import image_tensor
from tests.models.test_pipelines import generate, pixel, text  # noqa: F401  (fixtures)

TOLERANCE = 2 / 255


def images(result: dict[str, Any] | None) -> list[torch.Tensor]:
    assert result is not None
    return [image_tensor(a) for a in result["images"]]


def run(predictor: PipelinePredictor, arrivals: dict[int, list[Request]]) -> list[dict[str, Any]]:
    """Admit ``arrivals[s]`` before loop step s; the results in arrival order."""
    stepper = predictor.stepper()
    assert stepper is not None
    loop: StepLoop = stepper.loop()
    members, s = [], 0
    while loop.members or s <= max(arrivals):
        for request in arrivals.get(s, []):
            members.append(stepper.begin(request))
            loop.admit(members[-1])
        loop.step()
        s += 1
    return [stepper.finish(m) for m in members]


def assert_like_alone(predictor: PipelinePredictor, got: dict[str, Any], request: Request) -> None:
    want = images(predictor.predict([request])[0])
    for g, w in zip(images(got), want, strict=True):
        torch.testing.assert_close(g, w, atol=TOLERANCE, rtol=0)


def test_text_to_image_members_join_mid_loop_as_alone(text: PipelinePredictor) -> None:  # noqa: F811
    first = generate(2, [1, 2], steps=4, scheduler="ddim")
    late = generate(1, [3], steps=3, scheduler="dpmpp", prompt="a dog",
                    negative_prompt="red", guidance_scale=6.0)
    unguided = generate(1, [4], steps=2, scheduler="euler", guidance_scale=1.0)
    results = run(text, {0: [first], 2: [late, unguided]})
    for result, request in zip(results, (first, late, unguided), strict=True):
        assert_like_alone(text, result, request)
    assert (images(results[1])[0] - images(results[0])[0]).abs().max() > 0.1


def test_text_to_image_previews_decode_through_the_vae(text: PipelinePredictor) -> None:  # noqa: F811
    stepper = text.stepper()
    assert stepper is not None
    member = stepper.begin(generate(1, [5], steps=2, preview_every=1))
    loop = stepper.loop()
    loop.admit(member)
    loop.step()
    preview = stepper.preview(member)
    assert preview.name == "preview-1.png" and preview.meta["width"] >= 16


def test_what_runs_statically_on_a_latent_pipeline(text: PipelinePredictor) -> None:  # noqa: F811
    stepper = text.stepper()
    assert stepper is not None
    picture = Image.new("RGB", (16, 16), (200, 10, 10))
    assert stepper.key(generate(image=picture)) is None
    assert stepper.key(generate(loras=[{"name": "x", "scale": 1.0}])) is None
    assert stepper.key(generate(height=24, width=24)) != stepper.key(generate())


def test_pixel_pipeline_members_with_their_own_steps(pixel: PipelinePredictor) -> None:  # noqa: F811
    requests = [generate(1, [7], prompt=None, scheduler="euler", steps=5),
                generate(2, [8, 9], prompt=None, scheduler="ddpm", steps=2),
                generate(1, [10], prompt=None, scheduler="dpmpp", steps=3)]
    results = run(pixel, {0: requests[:2], 3: requests[2:]})
    for result, request in zip(results, requests, strict=True):
        assert_like_alone(pixel, result, request)
