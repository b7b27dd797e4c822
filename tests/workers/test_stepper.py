"""Step-level admission on the device executor: jobs join a running sampling loop at its
next step, leave it when done, canceled or late, and let other models' jobs go next; each
job's images are the ones it gets alone (to the tolerance of batched kernels)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from models.diffusion import DiffusionPredictor
from models.kinds.generate import GenerateArgs
from models.predictor import Artifact, Request
from tests.models.conftest import one_thread  # noqa: F401  (a fixture, used by every test)
from tests.models.test_diffusion import generate, image_tensor, tiny_predictor
from tests.workers.test_batcher import Steps, loaded, model
from workers.batcher import Batcher, Item, Stopped


class Slowed(torch.nn.Module):
    """The UNet, slowed to ``delay`` seconds a forward so that jobs can arrive mid-loop."""

    def __init__(self, unet: torch.nn.Module, delay: float) -> None:
        super().__init__()
        self.unet, self.delay = unet, delay

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return self.unet(*args, **kwargs)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory: pytest.TempPathFactory) -> DiffusionPredictor:
    p = tiny_predictor(tmp_path_factory.mktemp("ddpm"), 1.0)
    p.unet = Slowed(p.unet, 0.01)  # type: ignore[assignment]
    return p


def job(predictor: Any, name: str, request: Request, steps: list[int] | None = None,
        wanted: Any = None) -> Item:
    def on_progress(step: int, total: int) -> None:
        if steps is not None:
            steps.append(step)

    def on_preview(_: Artifact) -> None: ...

    return Item(job_id=name, predictor=predictor, entry=predictor.entry, request=request,
                wanted=wanted or (lambda: None), on_progress=on_progress, on_preview=on_preview)


def until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def same_images(got: dict, want: dict | None) -> None:
    assert want is not None
    for a, b in zip(got["images"], want["images"], strict=True):
        torch.testing.assert_close(image_tensor(a), image_tensor(b), atol=2 / 255, rtol=0)


def test_a_job_arriving_mid_loop_starts_at_the_next_step(ddpm: DiffusionPredictor) -> None:
    sizes: list[int] = []
    batcher = Batcher(on_batch=sizes.append, stepping=True)
    first_steps: list[int] = []
    first = job(ddpm, "first", generate(1, [1], steps=30), first_steps)
    late_request = generate(1, [2], steps=6, scheduler="dpmpp", class_index=2)
    late_steps: list[int] = []
    late = job(ddpm, "late", late_request, late_steps)
    batcher.submit(first)
    until(lambda: len(first_steps) >= 3, "the loop did not start")
    batcher.submit(late)
    late_result = late.future.result(timeout=20)
    assert not first.future.done()  # it did not wait for the running job's 30 steps
    assert late_steps == [1, 2, 3, 4, 5, 6]
    first_result = first.future.result(timeout=20)
    assert sizes[0] == 1 and 2 in sizes and len(sizes) == 30  # one loop of 30 forwards
    same_images(late_result, ddpm.predict([late_request])[0])
    same_images(first_result, ddpm.predict([generate(1, [1], steps=30)])[0])


def test_a_canceled_member_leaves_and_a_late_one_joins_after(ddpm: DiffusionPredictor) -> None:
    flagged: set[str] = set()
    batcher = Batcher(canceled=lambda ids: flagged & set(ids), poll_s=0.0, stepping=True)
    steps: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    a = job(ddpm, "a", generate(1, [3], steps=25), steps["a"])
    b = job(ddpm, "b", generate(1, [4], steps=25), steps["b"])
    batcher.submit(a)
    batcher.submit(b)
    until(lambda: len(steps["b"]) >= 3, "the loop did not start")
    flagged.add("b")
    with pytest.raises(Stopped) as raised:
        b.future.result(timeout=20)
    assert raised.value.reason == "canceled" and steps["b"][-1] < 25
    c_request = generate(2, [5, 6], steps=4, scheduler="euler")
    c = job(ddpm, "c", c_request, steps["c"])
    batcher.submit(c)  # joins after b left, while a still runs
    same_images(c.future.result(timeout=20), ddpm.predict([c_request])[0])
    assert not a.future.done()
    same_images(a.future.result(timeout=20), ddpm.predict([generate(1, [3], steps=25)])[0])


def test_a_late_member_times_out_alone(ddpm: DiffusionPredictor) -> None:
    batcher = Batcher(stepping=True)
    late_at: list[float] = [time.monotonic() + 3600]
    steps: list[int] = []
    a = job(ddpm, "a", generate(1, [7], steps=20), steps,
            wanted=lambda: "timeout" if time.monotonic() > late_at[0] else None)
    b = job(ddpm, "b", generate(1, [8], steps=20))
    batcher.submit(a)
    batcher.submit(b)
    until(lambda: len(steps) >= 2, "the loop did not start")
    late_at[0] = 0.0
    with pytest.raises(Stopped, match="timeout"):
        a.future.result(timeout=20)
    assert b.future.result(timeout=20)["images"]


def test_another_models_job_goes_next_and_stepping_off_is_static(
    ddpm: DiffusionPredictor,
) -> None:
    other = loaded(Steps, model("other"))
    done: list[str] = []
    batcher = Batcher(stepping=True)
    steps: list[int] = []
    a = job(ddpm, "a", generate(1, [9], steps=20), steps)
    batcher.submit(a)
    until(lambda: len(steps) >= 2, "the loop did not start")
    o = job(other, "other", Request("generate", GenerateArgs(seeds=[1], steps=1)))
    later = job(ddpm, "later", generate(1, [10], steps=2))
    for it in (o, later):
        it.future.add_done_callback(lambda _, name=it.job_id: done.append(name))
        batcher.submit(it)
    a.future.result(timeout=20)
    later.future.result(timeout=20)
    assert done == ["other", "later"]  # the loop drained, the other model's job went first

    sizes: list[int] = []
    static = Batcher(on_batch=sizes.append, stepping=False)
    runs = [job(ddpm, f"s{i}", generate(1, [i], steps=3)) for i in range(2)]
    for it in runs:
        static.submit(it)
    assert all(it.future.result(timeout=20)["images"] for it in runs)
    assert sum(sizes) == 2 and len(sizes) <= 2  # whole batches, not steps
