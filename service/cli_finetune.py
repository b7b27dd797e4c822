"""``convoy finetune``: a folder of class folders to a served model, in one command.

The folder is packed as a zip here (images only), uploaded, and named by a ``finetune``
job on the base model; the command follows the job's progress, prints the new model's
figures and, with ``--try IMAGE``, classifies an image with it. ``convoy delete-model``
removes a model made this way."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from models.finetune.archive import pack_folder
from service.cli_client import JSON, KEY, URL, UsageError, _follow, _report, console
from service.client import Client


def finetune(
    base: Annotated[str, typer.Argument(help="a classify model of the catalog")],
    name: Annotated[str, typer.Argument(help="the new model's name")],
    data: Annotated[Path | None, typer.Option(help="a folder of one folder of images per "
                                              "class")] = None,
    builtin: Annotated[str | None, typer.Option(help="or a built-in set: shapes-new, "
                                                "shapes-outline, digits-5-9, digits-0-4")] = None,
    per_class: Annotated[int, typer.Option(help="--builtin: images per class")] = 20,
    mode: Annotated[str, typer.Option(help="linear_probe | finetune | scratch")] = "finetune",
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    backbone_lr_factor: float = 0.1,
    val_share: float = 0.2,
    early_stopping: Annotated[int, typer.Option(help="epochs without a better validation "
                                                "accuracy before stopping (0: never)")] = 0,
    augment: Annotated[bool, typer.Option(help="random shifts, rotations, scaling")] = True,
    seed: int | None = None,
    try_image: Annotated[Path | None, typer.Option("--try", help="classify this image with "
                                                   "the new model")] = None,
    timeout: Annotated[float | None, typer.Option(help="seconds to wait")] = None,
    as_json: Annotated[bool, JSON] = False,
    url: Annotated[str | None, URL] = None,
    key: Annotated[str | None, KEY] = None,
) -> None:
    """Fine-tune BASE on a dataset and serve the result as NAME (owned by your key)."""
    if (data is None) == (builtin is None):
        raise UsageError("give one dataset: --data FOLDER or --builtin NAME")
    with Client(url, key) as client:
        dataset: dict[str, Any]
        if data is not None:
            dataset = {"upload": _upload_folder(client, data)}
        else:
            dataset = {"builtin": builtin, "per_class": per_class}
        job = client.submit("finetune", base, {
            "name": name, "dataset": dataset, "mode": mode, "epochs": epochs,
            "batch_size": batch_size, "learning_rate": learning_rate,
            "backbone_lr_factor": backbone_lr_factor, "val_share": val_share,
            "early_stopping": early_stopping, "augment": augment, "seed": seed})
        job = _follow(client, job, timeout)
        _report(client, job, None, as_json)
        if try_image is not None:
            try:
                image = base64.b64encode(try_image.read_bytes()).decode()
            except OSError as e:
                raise UsageError(f"cannot read {try_image}: {e.strerror}") from None
            result = client.run("classify", name, {"image": image, "top_k": 3})
            output = result.output.model_dump() if hasattr(result.output, "model_dump") \
                else result.output
            console.print_json(json.dumps(output))


def _upload_folder(client: Client, folder: Path) -> str:
    if not folder.is_dir():
        raise UsageError(f"no such folder: {folder}")
    buf = io.BytesIO()
    count = pack_folder(str(folder), buf)
    if count == 0:
        raise UsageError(f"{folder} holds no images in class folders (<class>/<image>)")
    console.print(f"packed {count} images of {folder} ({len(buf.getvalue())} bytes)")
    return client.upload(buf.getvalue(), "dataset.zip").id


def delete_model(name: str, url: Annotated[str | None, URL] = None,
                 key: Annotated[str | None, KEY] = None) -> None:
    """Delete one of your fine-tuned models."""
    with Client(url, key) as client:
        client.delete_model(name)
    typer.echo(f"model {name} deleted")
