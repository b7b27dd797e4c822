"""``finetune`` jobs on a worker: one training run per device at a time, beside inference.

A training run holds the device for minutes, so it never enters the micro-batcher: the
runtime hands it to ``Training``, one thread per process (one device per process), which
runs the transfer loop of ``models.finetune`` and talks to the store through its hooks:

- each step: the record's progress and a ``train`` event (loss, training accuracy, ETA),
  at most ``EVENTS_PER_S`` a second and always at an epoch's last step; the cancel flag and
  the deadline are read every step, so a canceled or late job stops at its next step;
- each epoch: an ``epoch`` event (with validation accuracy) and a checkpoint in the blob
  store (``jobs/<id>/train/checkpoint.safetensors`` and its JSON state): a job whose worker
  died is run again from its last epoch, not from the start;
- at the end: the weights and their sidecar under ``models/<id>/`` and the model's entry in
  the runtime catalog (``core.user_models``), owned by the job's owner, before the job
  is recorded as succeeded; the same two files are the job's artifacts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from core.blobs import BlobStore, check_key, upload_key
from core.errors import InvalidInput
from core.store import Job
from core.store.base import JobStore, StaleClaim, StoreUnavailable, now_iso
from core.user_models import UserModels, model_prefix
from models.catalog import Catalog
from models.kinds.finetune import BuiltinDataset, FinetuneArgs
from models.predictor import Artifact
from workers.batcher import Stopped

if TYPE_CHECKING:
    from models.finetune.datasets import Dataset
    from models.finetune.loop import Checkpoint

log = logging.getLogger(__name__)
EVENTS_PER_S = 4.0


def checkpoint_keys(job_id: str) -> tuple[str, str]:
    base = f"jobs/{job_id}/train/checkpoint"
    return check_key(f"{base}.safetensors"), check_key(f"{base}.json")


class _Hooks:
    """The loop's hooks for one job: events, cancel and deadline, checkpoints."""

    def __init__(self, store: JobStore, blobs: BlobStore, job: Job, deadline: float) -> None:
        self.store, self.blobs, self.job, self.deadline = store, blobs, job, deadline
        self.token = job.token
        self.stop_reason: str | None = None
        self._last = 0.0

    def _claims(self) -> dict[str, int]:
        return {self.job.id: self.token}

    def step(self, report: dict[str, Any]) -> bool:
        if time.time() > self.deadline:
            self.stop_reason = "timeout"
            return False
        try:
            why = self.store.stopped_among(self._claims()).get(self.job.id)
        except StoreUnavailable:
            why = None  # a store outage is no reason to stop training
        if why is not None:
            self.stop_reason = why
            return False
        now = time.monotonic()
        last_of_epoch = report["step"] % max(1, report["steps"] // report["epochs"]) == 0
        if now - self._last >= 1 / EVENTS_PER_S or last_of_epoch:
            self._last = now
            self._send(report)
        return True

    def _send(self, report: dict[str, Any]) -> None:
        job_id = self.job.id
        try:
            self.store.progress(self._claims(), report["step"], report["steps"])
            self.store.append_event(job_id, "train", report, token=self.token)
        except StaleClaim:
            self.stop_reason = "lost"
        except StoreUnavailable as e:
            log.warning("job %s: progress not recorded (%s)", job_id, e)

    def epoch(self, report: dict[str, Any], checkpoint: Checkpoint) -> None:
        from safetensors.torch import save

        weights_key, state_key = checkpoint_keys(self.job.id)
        self.blobs.put(weights_key, save(checkpoint.tensors), "application/octet-stream")
        self.blobs.put(state_key, json.dumps(checkpoint.state).encode(), "application/json")
        try:
            self.store.append_event(self.job.id, "epoch", report, token=self.token)
        except StaleClaim:
            self.stop_reason = "lost"
        except StoreUnavailable as e:
            log.warning("job %s: epoch event not recorded (%s)", self.job.id, e)


class Training:
    """Runs ``finetune`` jobs one at a time on this process's device."""

    def __init__(self, store: JobStore, blobs: BlobStore, catalog: Catalog, models: UserModels,
                 device: Any) -> None:
        self.store, self.blobs, self.catalog, self.models = store, blobs, catalog, models
        self.device = device
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="convoy-train")

    def submit(self, job: Job, timeout_s: float,
               on_start: Callable[[], bool]) -> Future[dict[str, Any]]:
        """Queue the job behind this device's training run, if any. ``on_start`` is told
        when it starts (False: the job is not this run's any more); the deadline is
        ``timeout_s`` from then."""
        return self._pool.submit(self._start, job, timeout_s, on_start)

    def _start(self, job: Job, timeout_s: float, on_start: Callable[[], bool]
               ) -> dict[str, Any]:
        if not on_start():
            raise Stopped("lost")
        return self.run(job, time.time() + timeout_s)

    def dataset(self, args: FinetuneArgs) -> Dataset:
        from models.finetune.datasets import builtin, from_archive

        spec = args.dataset
        if isinstance(spec, BuiltinDataset):
            return builtin(spec.builtin, spec.per_class, args.seed)
        data = self.blobs.read(upload_key(spec.upload))
        if data is None:
            raise InvalidInput("dataset: the archive is gone (its upload expired or was deleted)")
        return from_archive(data, f"upload {spec.upload}")

    def _resume(self, job_id: str) -> Checkpoint | None:
        from safetensors.torch import load

        from models.finetune.loop import Checkpoint

        weights_key, state_key = checkpoint_keys(job_id)
        tensors, state = self.blobs.read(weights_key), self.blobs.read(state_key)
        if tensors is None or state is None:
            return None
        return Checkpoint(load(tensors), json.loads(state))

    def run(self, job: Job, deadline: float) -> dict[str, Any]:
        from models.finetune.loop import Hyper, fit
        from models.finetune.loop import Stopped as LoopStopped
        from models.finetune.transfer import Base

        args = FinetuneArgs.model_validate(job.input)
        base = Base.from_entry(self.catalog.get(job.model))
        dataset = self.dataset(args)
        hyper = Hyper(mode=args.mode, epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate,
                      backbone_lr_factor=args.backbone_lr_factor, augment=args.augment,
                      val_share=args.val_share, early_stopping=args.early_stopping,
                      seed=args.seed)
        hooks = _Hooks(self.store, self.blobs, job, deadline)
        resume = self._resume(job.id)
        if resume is not None:
            self.store.append_event(job.id, "log", {
                "message": f"resuming from the checkpoint of epoch {resume.state['epoch']}"},
                token=hooks.token)
        started = time.monotonic()
        try:
            result = fit(base, dataset.labels, dataset.images, dataset.targets, hyper, hooks,
                         resume, self.device)
        except LoopStopped:
            raise Stopped(hooks.stop_reason or "canceled") from None
        if hooks.stop_reason == "lost":
            raise Stopped("lost")
        sidecar = {**result.sidecar, "finetune": {
            **result.sidecar["finetune"], "dataset": {"source": dataset.source,
                                                      "sha256": dataset.sha256,
                                                      "images": dataset.counts()}}}
        record = self._register(job, args.name, result.model, sidecar)
        self.blobs.delete(list(checkpoint_keys(job.id)))  # done: no run resumes from it
        return {"model": {k: record[k] for k in ("name", "base_model", "mode", "labels")},
                "metrics": result.metrics, "steps": result.steps,
                "resumed_from_epoch": result.resumed_from, "hyperparameters": asdict(hyper),
                "dataset": sidecar["finetune"]["dataset"],
                "train_seconds": round(time.monotonic() - started, 2),
                "weights": Artifact("model.safetensors", record["_weights"],
                                    "application/octet-stream"),
                "sidecar": Artifact("model.json", record["_sidecar"], "application/json")}

    def _register(self, job: Job, name: str, model: Any, sidecar: dict[str, Any]
                  ) -> dict[str, Any]:
        """Weights and sidecar under ``models/<job id>/``, and the owner's catalog entry."""
        import hashlib

        from safetensors.torch import save

        weights = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        side = (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode()
        prefix = model_prefix(job.id)
        self.blobs.put(prefix + "model.safetensors", weights, "application/octet-stream")
        self.blobs.put(prefix + "model.json", side, "application/json")
        base_entry = self.catalog.get(job.model)
        entry = {
            "name": name, "family": base_entry.family, "arch": base_entry.arch,
            "kinds": ["classify"], "labels": sidecar["labels"],
            "input": base_entry.input.model_dump(), "queue": base_entry.queue,
            "max_batch": base_entry.max_batch, "dtype": base_entry.dtype,
            "trace": base_entry.trace, "metrics": sidecar["metrics"],
            "description": f"{base_entry.name} fine-tuned ({sidecar['finetune']['mode']}) on "
                           f"{sidecar['finetune']['dataset']['source']}: "
                           f"{', '.join(sidecar['labels'])}",
        }
        record = {"owner": job.owner, "name": name, "entry": entry, "job_id": job.id,
                  "base_model": base_entry.name, "mode": sidecar["finetune"]["mode"],
                  "labels": sidecar["labels"], "created_at": now_iso(),
                  "weights_key": prefix + "model.safetensors", "sidecar_key": prefix + "model.json",
                  "weights_sha256": hashlib.sha256(weights).hexdigest()}
        self.models.put(record)
        log.info("job %s: model %s of %s registered", job.id, name, job.owner)
        return {**record, "_weights": weights, "_sidecar": side}
