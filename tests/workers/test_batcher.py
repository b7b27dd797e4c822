"""The micro-batcher: what it groups, where results go, cancellation inside a batch, and
out-of-memory recovery driven through WorkerRuntime.run_job on an embedded store."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from core.settings import Settings
from core.store.sqlite import SQLiteStore
from models.catalog import Catalog, ModelEntry
from models.kinds.generate import GenerateArgs
from models.predictor import Artifact, Predictor, Request, StepCallback
from models.registry import register_predictor
from tests.support.jobs import job, put
from workers.batcher import Batcher, Item, Stopped
from workers.cache import ModelCache
from workers.runtime import WorkerRuntime


def model(name: str, family: str = "test-steps", **extra: Any) -> ModelEntry:
    return ModelEntry(name=name, family=family, kinds=["generate"], **extra)


class Gate(Predictor):
    """Holds the executor until released, so that the next requests pile up behind it."""

    kinds = ("generate",)

    def load(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        self.running.set()
        assert self.release.wait(30), "the test never released the gate"
        return [{} for _ in batch]


register_predictor("test-gate")(Gate)


@register_predictor("test-steps")
class Steps(Predictor):
    """Runs ``steps`` steps (``step_s`` each), reporting each; each result names its seed."""

    kinds = ("generate",)
    # per batch: model, seeds, steps, live members at each step
    log: ClassVar[list[tuple[str, list[int], list[int], list[int]]]] = []

    def load(self) -> None:
        self.step_s = float(self.entry.config.get("step_s", 0.0))

    def batch_key(self, request: Request) -> Any:
        return (request.kind, request.input.steps)

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        live = list(range(len(batch)))
        sizes = []
        total = batch[0].input.steps
        for step in range(1, total + 1):
            time.sleep(self.step_s)
            sizes.append(len(live))
            if on_step is not None:
                keep = on_step(step, total, None)
                live = [i for i, k in zip(live, keep, strict=True) if k]
        Steps.log.append((self.entry.name, [r.input.seeds[0] for r in batch],
                          [r.input.steps for r in batch], sizes))
        results: list[dict[str, Any] | None] = [None] * len(batch)
        for i in live:
            results[i] = {"seed": batch[i].input.seeds[0], "batch": len(batch)}
        return results


def loaded(cls: type[Predictor], entry: ModelEntry) -> Any:
    predictor = cls(entry)
    predictor.load()
    return predictor


def item(predictor: Predictor, seed: int, steps: int = 2, wanted: Any = None,
         progress: list[int] | None = None, request: Request | None = None) -> Item:
    def on_progress(step: int, total: int) -> None:
        if progress is not None:
            progress.append(step)

    def on_preview(_: Artifact) -> None: ...

    return Item(job_id=f"job-{seed}", predictor=predictor, entry=predictor.entry,
                request=request or Request("generate", GenerateArgs(seeds=[seed], steps=steps)),
                wanted=wanted or (lambda: None), on_progress=on_progress, on_preview=on_preview)


def behind_gate(batcher: Batcher, items: Sequence[Item]) -> None:
    """Submit ``items`` while the executor is held, then let it go."""
    gate = loaded(Gate, model("gate", family="test-gate"))
    batcher.submit(item(gate, 0))
    assert gate.running.wait(10)
    for it in items:
        batcher.submit(it)
    gate.release.set()


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    Steps.log.clear()


def test_batches_group_by_model_and_steps_and_never_mix_them() -> None:
    a, b = loaded(Steps, model("a")), loaded(Steps, model("b"))
    items = [item(a, 1, 5), item(b, 2, 5), item(a, 3, 9), item(a, 4, 5), item(b, 5, 5),
             item(a, 6, 9), item(a, 7, 5)]
    behind_gate(Batcher(), items)
    results = [it.future.result(timeout=30) for it in items]
    assert [r["seed"] for r in results] == [1, 2, 3, 4, 5, 6, 7]  # each job got its own
    batches = {(name, steps[0]): sorted(seeds) for name, seeds, steps, _ in Steps.log}
    assert batches == {("a", 5): [1, 4, 7], ("b", 5): [2, 5], ("a", 9): [3, 6]}
    assert all(len(set(steps)) == 1 for _, _, steps, _ in Steps.log)


def test_batches_stop_at_max_batch_and_batching_off_runs_one_at_a_time() -> None:
    a = loaded(Steps, model("a", max_batch=2))
    items = [item(a, s) for s in range(1, 6)]
    behind_gate(Batcher(), items)
    assert [it.future.result(timeout=30)["seed"] for it in items] == [1, 2, 3, 4, 5]
    assert [len(seeds) for _, seeds, _, _ in Steps.log] == [2, 2, 1]

    Steps.log.clear()
    wide = loaded(Steps, model("wide", max_batch=8))
    items = [item(wide, s) for s in range(1, 4)]
    behind_gate(Batcher(enabled=False), items)
    assert [it.future.result(timeout=30)["batch"] for it in items] == [1, 1, 1]


def test_a_batch_of_digits_gives_each_job_its_own_prediction() -> None:
    """Distinct inputs in one batch: every job gets what it gets when it runs alone."""
    from core.contract import prepare
    from tests.helpers import digit_images

    entry = Catalog.load().get("lenet5-digits")
    lenet = ModelCache(torch.device("cpu")).get(entry)
    images, labels = digit_images(20)
    requests = [Request("classify", prepare("classify", {"image": im, "top_k": 3}, entry, 1 << 20))
                for im in images]
    alone = [lenet.predict([r])[0] for r in requests]
    sizes: list[int] = []
    items = [item(lenet, i, request=r) for i, r in enumerate(requests)]
    batcher = Batcher(on_batch=sizes.append)
    behind_gate(batcher, items)
    together = [it.future.result(timeout=30) for it in items]
    assert sizes[1:] == [20]  # after the gate, one batch of all twenty
    assert len(set(labels)) >= 8  # distinct inputs
    for one, batched in zip(alone, together, strict=True):
        assert [p["label"] for p in batched["predictions"]] == [p["label"] for p in one["predictions"]]
        for p, q in zip(batched["predictions"], one["predictions"], strict=True):
            assert p["score"] == pytest.approx(q["score"], abs=1e-4)


def test_a_canceled_member_leaves_the_batch_and_the_others_finish() -> None:
    slow = loaded(Steps, model("slow", config={"step_s": 0.02}))
    stop: dict[int, str] = {}
    progress: dict[int, list[int]] = {s: [] for s in (1, 2, 3)}
    items = [item(slow, s, steps=40, progress=progress[s], wanted=lambda s=s: stop.get(s))
             for s in (1, 2, 3)]
    behind_gate(Batcher(), items)
    deadline = time.monotonic() + 20
    while len(progress[2]) < 3:
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.01)
    stop[2] = "canceled"
    with pytest.raises(Stopped) as raised:
        items[1].future.result(timeout=20)
    assert raised.value.reason == "canceled"
    assert not items[0].future.done()  # it left while the others still run
    assert [items[i].future.result(timeout=20)["seed"] for i in (0, 2)] == [1, 3]
    assert progress[1][-1] == progress[3][-1] == 40 and progress[2][-1] < 40
    _, seeds, _, live = Steps.log[-1]
    assert sorted(seeds) == [1, 2, 3] and live[0] == 3 and live[-1] == 2


# -- out of memory, through the runtime ---------------------------------------------------------
@register_predictor("test-oom")
class OutOfMemoryAbove(Predictor):
    """Raises CUDA's out-of-memory error for batches above ``fits`` requests, and for any
    batch holding a request of more than one image (too big for the device on its own)."""

    kinds = ("generate",)
    batches: ClassVar[list[list[int]]] = []

    def load(self) -> None:
        self.fits = int(self.entry.config["fits"])

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        seeds = [r.input.seeds[0] for r in batch]
        OutOfMemoryAbove.batches.append(seeds)
        if len(batch) > self.fits or any(r.input.n > 1 for r in batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [{"seed": s} for s in seeds]


def test_out_of_memory_splits_the_batch_and_fails_only_the_job_that_does_not_fit(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "jobs.db")
    catalog = Catalog({e.name: e for e in (
        model("oomy", family="test-oom", max_batch=4, config={"fits": 2}),
        model("gate", family="test-gate"))})
    runtime = WorkerRuntime(Settings(redis_url=None, data_dir=tmp_path), store, catalog,
                            ModelCache(torch.device("cpu")))
    OutOfMemoryAbove.batches.clear()

    def submit(name: str, seed: int, n: int = 1) -> str:
        jid = f"{name}-{seed}"
        put(store, job(jid, owner="o", kind="generate", model=name,
                       input={"n": n, "seed": seed, "steps": 1, "scheduler": "ddpm"}))
        return jid

    outcomes: dict[str, str] = {}

    def run(jid: str) -> threading.Thread:
        t = threading.Thread(target=lambda: outcomes.__setitem__(jid, runtime.run_job(jid)))
        t.start()
        return t

    gate = run(submit("gate", 0))
    gate_predictor = runtime.cache.get(catalog.get("gate"))
    assert gate_predictor.running.wait(20)
    jobs = [submit("oomy", 1), submit("oomy", 2, n=4), submit("oomy", 3), submit("oomy", 4)]
    threads = [run(j) for j in jobs]
    deadline = time.monotonic() + 20
    while len(runtime.batcher._pending) < 4:  # all four wait behind the gate
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gate_predictor.release.set()
    for t in [gate, *threads]:
        t.join(30)

    assert {j: outcomes[j] for j in jobs} == {
        "oomy-1": "succeeded", "oomy-2": "gpu_oom", "oomy-3": "succeeded", "oomy-4": "succeeded"}
    sizes = [len(b) for b in OutOfMemoryAbove.batches]
    assert sizes[0] == 4 and sorted(sizes) == [1, 1, 2, 2, 4]  # halves, then halves again
    failed = store.get("oomy-2")
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and failed.error["code"] == "gpu_oom"
    assert store.get("oomy-3").output == {"seed": 3}  # type: ignore[union-attr]
    # the worker stays up: the next job runs
    assert runtime.run_job(submit("oomy", 5)) == "succeeded"
    assert store.get("oomy-5").output == {"seed": 5}  # type: ignore[union-attr]


def test_a_lone_job_of_a_slow_model_waits_max_wait_for_company_and_of_a_fast_one_does_not(
) -> None:
    slow = loaded(Steps, model("slow", max_wait_ms=200, config={"step_s": 2.1}))  # 2.1 s a batch
    fast = loaded(Steps, model("fast", max_wait_ms=200))
    batcher = Batcher()
    for predictor in (slow, fast):  # a first batch teaches the batcher how long one runs
        first = item(predictor, 0, steps=1)
        batcher.submit(first)
        first.future.result(timeout=30)
        time.sleep(0.5)  # long enough that the arrival gap says nothing more is coming
        pair = [item(predictor, 1, steps=1), item(predictor, 2, steps=1)]
        batcher.submit(pair[0])
        time.sleep(0.1)  # the second job comes 100 ms after the first, within max_wait
        batcher.submit(pair[1])
        assert [p.future.result(timeout=30)["batch"] for p in pair] == (
            [2, 2] if predictor is slow else [1, 1])


@register_predictor("test-threads")
class Threads(Predictor):
    """Answers each batch with torch's thread count during its forward."""

    kinds = ("generate",)

    def load(self) -> None: ...

    def predict(self, batch: list[Request], on_step: StepCallback | None = None
                ) -> list[dict[str, Any] | None]:
        return [{"threads": torch.get_num_threads(), "batch": len(batch)} for _ in batch]


def test_a_lone_request_on_the_cpu_gets_every_core_and_a_batch_the_usual_count() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        threads = loaded(Threads, model("threads", family="test-threads"))
        batcher = Batcher(lone_threads=2)
        lone = batcher.submit(item(threads, 0)).result(10)
        assert lone == {"threads": 2, "batch": 1}
        items = [item(threads, s) for s in range(1, 4)]
        behind_gate(batcher, items)  # three wait together: a batch, not a lone request
        assert [it.future.result(10) for it in items] == [{"threads": 1, "batch": 3}] * 3
        assert batcher.submit(item(threads, 9)).result(10) == {"threads": 2, "batch": 1}
        torch.set_num_threads(1)
        fixed = Batcher()  # the count set by CONVOY_TORCH_THREADS: left alone
        assert fixed.submit(item(threads, 10)).result(10) == {"threads": 1, "batch": 1}
    finally:
        torch.set_num_threads(before)
