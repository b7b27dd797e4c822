"""Step-level batching at the loop level: members join a running loop, run their own step
counts and schedulers, leave when done or dropped, and each gets the image it would get
alone (to the tolerance of batched kernels; never compared bit for bit)."""

from __future__ import annotations

import pytest
import torch

from models.diffusion import DiffusionPredictor
from models.predictor import Request
from models.stepping import Member, StepLoop
from tests.models.test_diffusion import generate, image_tensor, tiny_predictor

TOLERANCE = 2 / 255  # one grey level either way, after rounding to PNG


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> DiffusionPredictor:
    return tiny_predictor(tmp_path_factory.mktemp("ddpm-calm"), 1.0)


def alone(predictor: DiffusionPredictor, request: Request) -> list[torch.Tensor]:
    """The request's images from the static path, in a batch of its own."""
    out = predictor.predict([request])[0]
    assert out is not None
    return [image_tensor(a) for a in out["images"]]


def images(result: dict) -> list[torch.Tensor]:
    return [image_tensor(a) for a in result["images"]]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=TOLERANCE, rtol=0)


def drive(predictor: DiffusionPredictor, arrivals: dict[int, list[Request]],
          drop_at: dict[int, list[int]] | None = None) -> tuple[dict[int, dict], list[list[int]]]:
    """Run a loop in which request k of ``arrivals[s]`` joins before loop step s (numbered
    in arrival order over all steps); ``drop_at[s]`` names the requests dropped before step
    s. Returns the results by request number and the members (numbers) of each step."""
    stepper = predictor.stepper()
    loop = stepper.loop()
    number: dict[int, int] = {}  # id(member) → request number
    by_number: dict[int, Member] = {}
    results: dict[int, dict] = {}
    steps: list[list[int]] = []
    count, s = 0, 0
    last = max(arrivals)
    while loop.members or s <= last:
        for k in (drop_at or {}).get(s, []):
            loop.drop(by_number[k])
        for request in arrivals.get(s, []):
            member = stepper.begin(request)
            loop.admit(member)
            number[id(member)], by_number[count] = count, member
            count += 1
        steps.append(sorted(number[id(m)] for m in loop.members))
        for m in loop.step():
            results[number[id(m)]] = stepper.finish(m)
        s += 1
    return results, steps


def test_a_job_joining_a_running_loop_gets_the_image_it_gets_alone(
    calm: DiffusionPredictor,
) -> None:
    first, late = generate(2, [1, 2], steps=6), generate(1, [3], steps=6, class_index=2)
    results, steps = drive(calm, {0: [first], 3: [late]})
    assert steps[:4] == [[0], [0], [0], [0, 1]]  # it started at the next step, not after
    assert steps[6:] == [[1], [1], [1]]
    assert_same(images(results[0]), alone(calm, first))
    assert_same(images(results[1]), alone(calm, late))
    # the same seed in another composition: the same image; another seed: another image
    assert (images(results[1])[0] - images(results[0])[0]).abs().max() > 0.2


def test_members_with_their_own_steps_and_schedulers_share_a_loop(
    calm: DiffusionPredictor,
) -> None:
    requests = [
        generate(1, [5], steps=3, scheduler="ddim"),
        generate(1, [6], steps=7, scheduler="dpmpp", guidance_scale=1.0),
        generate(2, [7, 8], steps=5, scheduler="euler", class_index=None),
        generate(1, [9], steps=4, scheduler="ddpm", class_index=1),
    ]
    results, steps = drive(calm, {0: requests})
    assert [len(s) for s in steps] == [4, 4, 4, 3, 2, 1, 1]  # each leaves after its own last step
    for k, request in enumerate(requests):
        assert_same(images(results[k]), alone(calm, request))


def test_a_dropped_member_leaves_and_the_others_are_unchanged(calm: DiffusionPredictor) -> None:
    # DPM-Solver++ keeps per-image history: each member's is its own, so a drop cuts nothing
    requests = [generate(1, [11], scheduler="dpmpp", steps=5),
                generate(2, [12, 13], scheduler="dpmpp", steps=5)]
    results, steps = drive(calm, {0: requests}, drop_at={2: [1]})
    assert steps == [[0, 1], [0, 1], [0], [0], [0]]
    assert list(results) == [0]
    assert_same(images(results[0]), alone(calm, requests[0]))


def test_a_member_joining_after_another_left(calm: DiffusionPredictor) -> None:
    short, long = generate(1, [21], steps=2), generate(1, [22], steps=6, scheduler="dpmpp")
    late = generate(1, [23], steps=3, scheduler="euler", class_index=2)
    results, steps = drive(calm, {0: [short, long], 3: [late]})
    assert steps == [[0, 1], [0, 1], [1], [1, 2], [1, 2], [1, 2]]
    for k, request in enumerate((short, long, late)):
        assert_same(images(results[k]), alone(calm, request))


def test_edits_and_previews_run_per_member(calm: DiffusionPredictor) -> None:
    from PIL import Image

    picture = Image.new("L", (16, 16), 200)
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    inpaint = generate(1, [31], steps=4, image=picture, mask=mask, preview_every=2)
    plain = generate(1, [32], steps=4)
    stepper = calm.stepper()
    loop = stepper.loop()
    members = [stepper.begin(inpaint), stepper.begin(plain)]
    for m in members:
        loop.admit(m)
    previews = []
    while loop.members:
        loop.step()
        previews.append([stepper.preview(m).name if m.wants_preview else None for m in members])
    assert previews == [[None, None], ["preview-2.png", None], [None, None],
                        ["preview-4.png", None]]
    assert_same(images(stepper.finish(members[0])), alone(calm, inpaint))
    kept = images(stepper.finish(members[0]))[0][:, 8:]
    assert (kept - 200 / 255).abs().max() < 1e-6  # the unmasked half exactly as given


def test_a_member_without_steps_is_refused(calm: DiffusionPredictor) -> None:
    stepper = calm.stepper()
    member = stepper.begin(generate(1, [1], steps=2))
    member.index = member.total
    with pytest.raises(ValueError, match="no step to run"):
        StepLoop(calm.unet, "class_labels").admit(member)



def test_a_step_records_no_autograd_graph(calm: DiffusionPredictor) -> None:
    # the UNet's weights require grad: a step run with autograd on keeps every forward's
    # graph alive through the latents, which slows each step as a static batch's is not
    assert any(p.requires_grad for p in calm.unet.parameters())
    stepper = calm.stepper()
    loop = stepper.loop()
    member = stepper.begin(generate(1, [41], steps=3, preview_every=1))
    loop.admit(member)
    loop.step()
    assert member.latents.grad_fn is None and not member.latents.requires_grad
    assert member.x0 is not None and member.x0.grad_fn is None
    assert stepper.preview(member).name == "preview-1.png"
