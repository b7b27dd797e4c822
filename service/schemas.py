"""What the API answers, as pydantic models: the job record, pages of jobs, models, workers
and the payload of each event type.

The routes return plain dicts from the store; FastAPI checks them against these models, and
the OpenAPI document carries them, so a generated client (and the SDK in
``service/client``) reads typed records. Models that others may grow (a model's entry, a
worker's heartbeat, an output) allow extra fields: a newer server does not break an older
client.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.kinds import KINDS

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
Kind = Literal[KINDS]  # type: ignore[valid-type]  # every kind of models/kinds
_OPEN = ConfigDict(extra="allow")


class Artifact(BaseModel):
    """Bytes a job produced, fetched from ``url`` (``GET /v1/jobs/{id}/artifacts/{name}``)."""

    model_config = _OPEN
    name: str = Field(description="file name, unique within the job", examples=["image-0.png"])
    url: str = Field(description="path of the bytes on this server",
                     examples=["/v1/jobs/3f9c.../artifacts/image-0.png"])
    content_type: str = Field(description="media type of the bytes", examples=["image/png"])
    width: int | None = Field(None, description="image width in pixels", examples=[32])
    height: int | None = Field(None, description="image height in pixels", examples=[32])
    seed: int | None = Field(None, description="generated images: the seed that redraws "
                             "this image alone", examples=[42])
    bytes: int | None = Field(None, description="size of the bytes", examples=[1893])
    sha256: str | None = Field(None, description="SHA-256 of the bytes, hex",
                               examples=["9f86d081884c7d659a2feaa0c55ad015..."])


class Upload(BaseModel):
    """An image uploaded for later jobs (``POST /v1/uploads``); a job input names it as
    ``{"upload": id}``. It expires with the retention (CONVOY_RETENTION_S) of jobs."""

    id: str = Field(description="what a job input names", examples=["Jx2t0k3mQ1yP9vL8sR4aZc7wE5u"])
    bytes: int = Field(description="size of the file", examples=[15728640])
    content_type: str = Field(description="the image's media type", examples=["image/png"])
    sha256: str = Field(description="SHA-256 of the file, hex")
    width: int = Field(description="pixels", examples=[2048])
    height: int = Field(description="pixels", examples=[2048])
    created_at: str | None = Field(None, description="ISO 8601 time of the upload")


class Size(BaseModel):
    height: int = Field(description="pixels", examples=[32])
    width: int = Field(description="pixels", examples=[32])


class Prediction(BaseModel):
    label: str = Field(description="the class name", examples=["7"])
    index: int = Field(description="the class index in the model's labels", examples=[7])
    score: float = Field(description="softmax probability", examples=[0.98])


class ClassArea(BaseModel):
    label: str = Field(description="the class name", examples=["circle"])
    index: int = Field(description="the class index; the mask's pixel value", examples=[1])
    pixels: int = Field(description="pixels of this class in the mask", examples=[812])
    fraction: float = Field(description="share of the mask's pixels", examples=[0.198])
    colour: str | None = Field(None, description="the overlay's colour for this class, "
                               "#rrggbb", examples=["#e6194b"])


class ClassifyOutput(BaseModel):
    """``classify``."""

    model_config = _OPEN
    predictions: list[Prediction] = Field(description="top_k labels, best first")
    input_size: Size | None = Field(None, description="the size the image was resized to")


class SegmentOutput(BaseModel):
    """``segment``."""

    model_config = _OPEN
    mask: Artifact = Field(description="8-bit PNG; each pixel is a class index")
    overlay: Artifact = Field(description="the classes painted over the input")
    classes: list[ClassArea] = Field(description="area of each class")
    input_size: Size | None = None


class ReconstructOutput(BaseModel):
    """``reconstruct``."""

    model_config = _OPEN
    reconstruction: Artifact = Field(description="the decoded image")
    latent: list[float] = Field(description="the encoder's mean")
    mse: float = Field(description="mean squared error against the resized input")
    psnr: float = Field(description="peak signal-to-noise ratio in dB")
    input_size: Size | None = None


class ImagesOutput(BaseModel):
    """``sample`` and ``generate``."""

    model_config = _OPEN
    images: list[Artifact] = Field(description="one per image asked for, with its seed")
    input_size: Size | None = None


class FinetuneOutput(BaseModel):
    """``finetune``: the new model, served at once under its name to the submitting key."""

    model_config = _OPEN
    model: dict[str, Any] = Field(description="name, base_model, mode and labels of the "
                                  "new model (GET /v1/models/{name})")
    metrics: dict[str, Any] = Field(description="validation and training accuracy, loss, "
                                    "epochs run, images, trainable parameters")
    steps: int = Field(description="training steps this attempt ran (fewer than the whole "
                       "run when it resumed from a checkpoint)", examples=[120])
    resumed_from_epoch: int = Field(description="epochs done by an earlier attempt (0: none)",
                                    examples=[0])
    weights: Artifact = Field(description="model.safetensors: the new model's weights")
    sidecar: Artifact = Field(description="model.json: base model, mode, labels, dataset "
                              "hash, validation metrics, hyperparameters, history")


class Progress(BaseModel):
    step: int = Field(description="steps done", examples=[7])
    total: int = Field(description="steps in all", examples=[20])


class JobError(BaseModel):
    """Why a job failed."""

    model_config = _OPEN
    code: str = Field(description="invalid_input, gpu_oom, timeout, worker_lost, internal",
                      examples=["timeout"])
    message: str = Field(description="what happened, in plain words")


class Links(BaseModel):
    self: str = Field(examples=["/v1/jobs/3f9c..."])
    events: str = Field(examples=["/v1/jobs/3f9c.../events"])
    cancel: str = Field(examples=["/v1/jobs/3f9c.../cancel"])


Output = (ClassifyOutput | SegmentOutput | ReconstructOutput | ImagesOutput | FinetuneOutput
          | dict[str, Any])


class QueueInfo(BaseModel):
    """Where a queued job stands on its queue."""

    model_config = _OPEN
    position: int = Field(description="1 for the next job to start", examples=[3])
    ahead: int = Field(description="queued jobs that start before it", examples=[2])
    workers: int = Field(0, description="live workers taking this queue")
    eta_start_at: str | None = Field(None, description="estimated start (ISO 8601 UTC), from "
                                     "recent run times; null until the workers have any")
    eta_finish_at: str | None = Field(None, description="estimated finish")
    eta_start_s: float | None = Field(None, description="seconds from now to the estimated "
                                      "start")


class JobRecord(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` shows it."""

    id: str = Field(description="random (128 bits or more) or client-chosen",
                    examples=["3f9c2a8e5d7b4c1f9e0a6b2d8c4e7f1a"])
    kind: str = Field(description="classify, segment, reconstruct, sample, generate or "
                      "finetune",
                      examples=["generate"])
    model: str = Field(description="the catalog name", examples=["ddpm-digits"])
    status: JobStatus = Field(description="queued -> running -> succeeded | failed | canceled")
    created_at: str = Field(description="ISO 8601 UTC", examples=["2026-01-01T12:00:00.000Z"])
    started_at: str | None = Field(None, description="when the last attempt started")
    finished_at: str | None = Field(None, description="when the job reached its final status")
    progress: Progress | None = Field(None, description="iterative kinds, while running")
    input: dict[str, Any] = Field(description="the input as stored: defaults and the drawn "
                                  "seed filled in, images replaced by '<N characters>'")
    output: Output | None = Field(None, description="succeeded jobs: the kind's output; "
                                  "artifacts appear as links")
    error: JobError | None = Field(None, description="failed or canceled jobs")
    attempts: int = Field(0, description="runs started on a device (a job its worker "
                          "was lost with runs again; one it merely held is not counted)")
    waiting: str | None = Field(None, description="a queued job while no worker lives: why "
                                "it waits (absent otherwise)")
    priority: int = Field(0, description="higher starts first on the queue (0..9)")
    queue: QueueInfo | None = Field(None, description="queued jobs: position and ETA")
    device_s: float | None = Field(None, description="device-seconds charged: the job's "
                                   "share of each batch it ran in")
    webhook: str | None = Field(None, description="the URL that receives the job's events")
    webhook_events: list[str] | None = Field(None, description="the events it receives: "
                                             "start, progress, output, completed",
                                             examples=[["completed"]])
    links: Links


class JobList(BaseModel):
    jobs: list[JobRecord] = Field(description="the caller's jobs, newest first")
    next_cursor: str | None = Field(None, description="pass as cursor for the next page; "
                                    "null on the last page")


class ModelInput(BaseModel):
    model_config = _OPEN
    channels: int = Field(description="1 grayscale, 3 RGB", examples=[1])
    height: int = Field(description="pixels", examples=[32])
    width: int = Field(description="pixels", examples=[32])


class ModelLimits(BaseModel):
    model_config = _OPEN
    max_n: int = Field(description="images per sample/generate job")
    max_steps: int = Field(description="generate steps")
    max_side: int = Field(description="height/width of pipelines that take them")
    max_prompt_chars: int = Field(description="prompt and negative_prompt length")
    max_top_k: int = Field(description="classify top_k")


class ModelInfo(BaseModel):
    """One catalog entry as ``GET /v1/models`` shows it."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str = Field(examples=["lenet5-digits"])
    kinds: list[str] = Field(description="the job kinds it serves", examples=[["classify"]])
    family: str = Field(description="the predictor that serves it", examples=["lenet5"])
    labels: list[str] = Field(description="class names, by index (class_label takes one)")
    input: ModelInput = Field(description="the size input images are resized to")
    description: str = Field(description="what it is and what input it expects")
    metrics: dict[str, Any] = Field(description="held-out figures from its training")
    queue: str = Field(description="the broker queue its jobs go to")
    max_batch: int = Field(description="jobs one forward pass may carry")
    limits: ModelLimits
    controlnet: bool = Field(False, description="generate takes control_image: the catalog "
                             "names a ControlNet for it")
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="each kind it serves -> the JSON schema of that "
        "kind's input as this model takes it: bounded by its limits, its labels as the only "
        "classes, without the fields it refuses (what a form can be built from)")


class ModelList(BaseModel):
    models: list[ModelInfo]
    partial: bool = Field(False, description="true while the store does not answer: the file "
                          "catalog's models are listed, the caller's fine-tuned ones are not")


class WorkerInfo(BaseModel):
    """A live worker, from its last heartbeat."""

    model_config = _OPEN
    id: str
    host: str | None = None
    pid: int | None = None
    device: str | None = Field(None, examples=["cpu", "cuda:0"])
    models: list[str] = Field(default_factory=list, description="models loaded now")
    memory_bytes: int | None = Field(None, description="memory the loaded models use")
    jobs_done: int | None = None
    batches: int | None = None
    started_at: str | float | None = None


class WorkerList(BaseModel):
    workers: list[WorkerInfo]
    queued: int | None = Field(None, description="jobs queued in all, every model and owner")


class Health(BaseModel):
    status: Literal["ok"]


# -- event payloads (the data: line of each server-sent event) -------------------------------
class StatusEvent(BaseModel):
    """``status``: the job's status changed; the stream ends after a final one."""

    model_config = _OPEN
    status: JobStatus
    attempt: int | None = Field(None, description="running: which attempt this is")


class ProgressEvent(Progress):
    """``progress``: a step of an iterative job."""


class TrainEvent(BaseModel):
    """``train``: a finetune job's step (at most 4 a second, and every epoch's last)."""

    model_config = _OPEN
    epoch: int = Field(description="the epoch running, from 1", examples=[2])
    epochs: int = Field(examples=[10])
    step: int = Field(description="steps done in all, this run and any it resumed",
                      examples=[14])
    steps: int = Field(description="steps of the whole run", examples=[70])
    loss: float = Field(description="the step's training loss", examples=[0.41])
    train_accuracy: float = Field(description="the epoch's training accuracy so far",
                                  examples=[0.86])
    eta_s: float | None = Field(None, description="seconds to the end, at this run's pace",
                                examples=[12.5])


class EpochEvent(BaseModel):
    """``epoch``: a finetune job's epoch, after its checkpoint is stored."""

    model_config = _OPEN
    epoch: int = Field(examples=[2])
    epochs: int = Field(examples=[10])
    step: int = Field(examples=[14])
    steps: int = Field(examples=[70])
    loss: float = Field(description="the epoch's mean training loss", examples=[0.47])
    train_accuracy: float = Field(examples=[0.83])
    val_accuracy: float | None = Field(None, description="on the held-back share (null "
                                       "with val_share 0)", examples=[0.9])


class LogEvent(BaseModel):
    """``log``: a note from the service (a worker lost, the job queued again)."""

    model_config = _OPEN
    message: str


class WebhookEvent(BaseModel):
    """``webhook``: one attempt at a webhook delivery (it may come after the final status)."""

    model_config = _OPEN
    id: str = Field(description="the delivery's webhook-id, the same on every attempt",
                    examples=["msg_3f9c..._5"])
    event: Literal["start", "progress", "output", "completed"]
    attempt: int = Field(description="1, 2, ... per delivery")
    state: Literal["delivered", "pending", "failed"] = Field(
        description="delivered (a 2xx answer), pending (retried in retry_in_s) or failed "
        "(refused address, or retries exhausted)")
    status_code: int | None = Field(None, description="the receiver's HTTP status")
    error: str | None = Field(None, description="why the attempt failed")
    retry_in_s: float | None = Field(None, description="pending: seconds to the next attempt")


class QueueEvent(QueueInfo):
    """``queue``: a queued job's position changed (sent at most about once a second)."""


class Usage(BaseModel):
    """The caller's device-seconds in the current quota period."""

    owner: str
    period_start: int = Field(description="epoch seconds; periods are CONVOY_QUOTA_PERIOD_S long")
    period_s: int
    device_s: float = Field(description="device-seconds used in this period")
    by_model: dict[str, float] = Field(description="device-seconds by model")
    quota_device_s: float | None = Field(None, description="the key's quota (null: none)")
    remaining_device_s: float | None = None


class WebhookSecret(BaseModel):
    """The caller's webhook signing secret."""

    secret: str = Field(description="Standard Webhooks secret ('whsec_' + base64)",
                        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    scheme: str = Field(examples=["standard-webhooks"])
    headers: list[str] = Field(examples=[["webhook-id", "webhook-timestamp",
                                          "webhook-signature"]])


EVENT_PAYLOADS: dict[str, type[BaseModel]] = {
    "status": StatusEvent, "progress": ProgressEvent, "preview": Artifact, "log": LogEvent,
    "output": ImagesOutput, "error": JobError, "webhook": WebhookEvent, "queue": QueueEvent,
    "train": TrainEvent, "epoch": EpochEvent}
EVENTS_DESCRIPTION = """Server-sent events (text/event-stream). Each event has `id:` (1, 2, ...
per job), `event:` and `data:` (JSON):

- `status`: `StatusEvent`, e.g. `{"status": "running", "attempt": 1}`
- `progress`: `ProgressEvent`, `{"step": 7, "total": 20}`
- `preview`: an `Artifact` (generate with preview_every)
- `log`: `LogEvent`, `{"message": "..."}`
- `train`: `TrainEvent`, a finetune job's step (at most 4 a second)
- `epoch`: `EpochEvent`, a finetune job's epoch, after its checkpoint is stored
- `output`: the kind's output (`ClassifyOutput`, `SegmentOutput`, `ReconstructOutput`,
  `ImagesOutput`, `FinetuneOutput`), sent before the final status of a succeeded job
- `error`: `JobError`, sent before the final status of a failed job
- `queue`: `QueueEvent`, `{"position": 3, "ahead": 2, "eta_start_at": "..."}` while queued
- `webhook`: `WebhookEvent`, an attempt at a webhook delivery; those of the `completed`
  delivery come after the final status (reconnect with `Last-Event-ID` to read them)

The stream ends after the event that carries the final status (succeeded, failed,
canceled). Reconnect with `Last-Event-ID: N` to receive the events after N only; a stream of
a finished job replays its events and ends. A `: ping` comment comes every 15 s."""
