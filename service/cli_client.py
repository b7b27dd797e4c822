"""The client half of the ``convoy`` command: ``submit``, ``models`` and ``jobs ...``, on the
SDK (``service.client``). Input values are typed from the kind's schema, so
``-i class_label=7`` sends the string "7" and ``-i n=4`` the number 4; ``@path`` reads an
image file. Errors end the command with one line on stderr (``main`` in ``service/cli.py``
turns SDK errors into that line)."""

from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from core.contract import INPUTS
from models.kinds.common import IMAGE_FIELDS, IMAGE_LISTS
from service.client import TERMINAL, Client, JobRecord, ModelInfo

IMAGE_INPUTS = IMAGE_FIELDS + IMAGE_LISTS  # the fields whose values may be @path
URL = typer.Option(envvar="CONVOY_URL", help="the service's address [default: "
                   "http://127.0.0.1:8000]", show_default=False)
KEY = typer.Option(envvar="CONVOY_API_KEY", help="API key, if the server has keys")
JSON = typer.Option("--json", help="print JSON (for scripts)")
console = Console()
jobs_app = typer.Typer(help="List, inspect, follow, wait for, cancel and delete jobs.",
                       no_args_is_help=True)


class UsageError(Exception):
    """A command line that cannot be run as given (printed as one line)."""


def _read_image(value: str) -> str:
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return base64.b64encode(path.read_bytes()).decode()
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def _file_ref(value: str, part: str, files: dict[str, Path]) -> Any:
    """``@path`` as ``{"file": part}`` with the path kept in ``files`` (sent as a file part
    of a multipart submission, streamed from disk); other values as they are."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    files[part] = path
    return {"file": part}


def parse_inputs(kind: str, items: list[str], image: Path | None = None,
                 files: dict[str, Path] | None = None) -> dict[str, Any]:
    """``key=value`` strings to the kind's input, each value typed from the kind's schema.
    An ``@path`` image is read as base64, or with ``files`` named as ``{"file": part}``
    and its path put in ``files`` under that part's name."""
    schema = INPUTS.get(kind)
    if schema is None:
        raise UsageError(f"unknown kind {kind!r}; kinds: {', '.join(INPUTS)}")
    fields = schema.model_fields
    raw: dict[str, list[str]] = {}
    if image is not None:
        raw["image"] = ["@" + str(image)]
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"-i takes key=value, got {item!r}")
        if key not in fields:
            raise UsageError(f"{kind} takes no {key!r}; it takes {', '.join(fields)}")
        raw.setdefault(key, []).append(value)
    out: dict[str, Any] = {}
    for key, values in raw.items():
        if key in IMAGE_INPUTS and files is not None:
            refs = [_file_ref(v, key if len(values) == 1 else f"{key}-{i}", files)
                    for i, v in enumerate(values)]
            if any(isinstance(r, dict) for r in refs):  # checked by the server, with the files
                out[key] = refs if _is_list(fields[key].annotation) else refs[-1]
                continue
        if key in IMAGE_INPUTS:
            values = [_read_image(v) for v in values]
        annotation = fields[key].annotation
        value: Any = values if _is_list(annotation) else values[-1]
        try:
            out[key] = TypeAdapter(annotation).validate_python(value)
        except ValidationError as e:
            why = e.errors()[0]["msg"]
            raise UsageError(f"{key}={values[-1][:40]!r}: {why}") from None
    return out


def _is_list(annotation: Any) -> bool:
    return "list[" in str(annotation)


def _follow(client: Client, job: JobRecord, timeout: float | None) -> JobRecord:
    """Wait for the job's end (``WaitTimeout`` after ``timeout``) with a progress bar."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{job.id[:12]} {job.status}", total=None)

        def show(current: JobRecord) -> None:
            if current.progress is not None:
                bar.update(task, completed=current.progress.step, total=current.progress.total)
            bar.update(task, description=f"{current.id[:12]} {current.status}")

        return client.wait(job.id, timeout, on_progress=show)


def _report(client: Client, job: JobRecord, out: Path | None, as_json: bool) -> None:
    if as_json:
        typer.echo(job.model_dump_json(indent=2))
    else:
        typer.echo(f"job {job.id} {job.status}")
        if job.output is not None:
            output = job.output if isinstance(job.output, dict) else job.output.model_dump(
                exclude_none=True)
            console.print_json(json.dumps(output))
    if out is not None and job.status == "succeeded":
        for path in client.download(job, out):
            typer.echo(f"saved {path}")
    if job.status in ("failed", "canceled"):
        why = f": {job.error.code}: {job.error.message}" if job.error else ""
        raise UsageError(f"job {job.id} {job.status}{why}")


def submit(
    kind: Annotated[str, typer.Argument(help="classify, segment, reconstruct, sample, generate")],
    model: Annotated[str, typer.Option("--model", "-m", help="a name from `convoy models`")],
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", "--set", help="key=value, typed from the kind's schema; @path for an "
        "image file (repeat for each field)")] = None,
    image: Annotated[Path | None, typer.Option(help="an image file: -i image=@PATH")] = None,
    job_id: Annotated[str | None, typer.Option("--id", help="client-chosen id "
                                               "(idempotent submission)")] = None,
    timeout_s: Annotated[float | None, typer.Option(help="the job's deadline")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job to its end")] = False,
    out: Annotated[Path | None, typer.Option(help="with --wait: save the artifacts here")] = None,
    as_json: Annotated[bool, JSON] = False,
    url: Annotated[str | None, URL] = None,
    key: Annotated[str | None, KEY] = None,
) -> None:
    """Submit a job; with --wait show its progress and print its output."""
    if out is not None and not wait:
        raise UsageError("--out saves the artifacts of a finished job: add --wait")
    files: dict[str, Path] = {}  # image files go with the request as multipart parts
    data = parse_inputs(kind, inputs or [], image, files)
    with Client(url, key) as client:
        job = client.submit(kind, model, data, id=job_id, timeout_s=timeout_s,
                            files=dict(files) or None)
        if not wait:
            typer.echo(job.model_dump_json(indent=2) if as_json else f"job {job.id} {job.status}")
            return
        if job.status not in TERMINAL:
            job = _follow(client, job, None)
        _report(client, job, out, as_json)


_NOT_FIGURES = ("epoch", "seconds", "batch", "n_", "lr", "seed", "steps", "seen")
_HEADLINE = ("top1", "mean_iou", "psnr", "shape_kept", "conditional_accuracy")  # shown first


def _figures(metrics: dict[str, Any]) -> str:
    """The held-out figures of a sidecar, without its training settings (epochs, times);
    the headline figures first."""
    keys = sorted(metrics, key=lambda k: _HEADLINE.index(k) if k in _HEADLINE else len(_HEADLINE))
    flat = [f"{k}={metrics[k]:.4g}" for k in keys
            if isinstance(metrics[k], int | float) and not isinstance(metrics[k], bool)
            and not any(word in k for word in _NOT_FIGURES)]
    return ", ".join(flat[:2])


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 4] + " ..."


def format_models(models: list[ModelInfo], width: int = 80) -> str:
    """One block per model: name, kinds, input size and figures; its labels; what it is."""
    lines: list[str] = []
    for m in models:
        size = f"{m.input.channels}x{m.input.height}x{m.input.width}"
        head = f"{m.name:<18} {','.join(m.kinds):<19} {size:<9} {_figures(m.metrics)}"
        lines.append(_clip(head.rstrip(), width))
        if m.labels:
            lines.append(_clip(f"  labels ({len(m.labels)}): {', '.join(m.labels)}", width))
        lines += textwrap.wrap(m.description, width, initial_indent="  ",
                               subsequent_indent="  ")
        lines.append("")
    return "\n".join(lines).rstrip()


def models(as_json: Annotated[bool, JSON] = False, url: Annotated[str | None, URL] = None,
           key: Annotated[str | None, KEY] = None) -> None:
    """The service's models: kinds, input size, labels, held-out figures."""
    with Client(url, key) as client:
        found = client.models()
    if as_json:
        typer.echo(json.dumps({"models": [m.model_dump() for m in found]}, indent=2))
    else:
        typer.echo(format_models(found))


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, "
                                               "canceled")] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(help="jobs to show")] = 20,
    as_json: Annotated[bool, JSON] = False,
    url: Annotated[str | None, URL] = None,
    key: Annotated[str | None, KEY] = None,
) -> None:
    """Your jobs, newest first."""
    with Client(url, key) as client:
        found = []
        for job in client.iter_jobs(status=status, kind=kind, page_size=min(limit, 200)):
            found.append(job)
            if len(found) >= limit:
                break
    if as_json:
        typer.echo(json.dumps([j.model_dump() for j in found], indent=2))
        return
    for j in found:
        typer.echo(f"{j.id}  {j.status:<9}  {j.kind:<11}  {j.model}  {j.created_at[:19]}")


@jobs_app.command("get")
def jobs_get(job_id: str, url: Annotated[str | None, URL] = None,
             key: Annotated[str | None, KEY] = None) -> None:
    """A job's record, as JSON."""
    with Client(url, key) as client:
        typer.echo(client.get(job_id).model_dump_json(indent=2))


@jobs_app.command("events")
def jobs_events(
    job_id: str,
    last_event_id: Annotated[int | None, typer.Option(help="resume after this event")] = None,
    url: Annotated[str | None, URL] = None,
    key: Annotated[str | None, KEY] = None,
) -> None:
    """A job's events, one a line (id, type, data), until its final status."""
    with Client(url, key) as client:
        for event in client.events(job_id, last_event_id):
            typer.echo(f"{event.id} {event.type} {json.dumps(event.data)}")


@jobs_app.command("wait")
def jobs_wait(
    job_id: str,
    timeout: Annotated[float | None, typer.Option(help="give up after this many seconds")] = None,
    out: Annotated[Path | None, typer.Option(help="save the artifacts here")] = None,
    as_json: Annotated[bool, JSON] = False,
    url: Annotated[str | None, URL] = None,
    key: Annotated[str | None, KEY] = None,
) -> None:
    """Wait for a job's end with a progress bar; print its output."""
    with Client(url, key) as client:
        job = client.get(job_id)
        if job.status not in TERMINAL:
            job = _follow(client, job, timeout)
        _report(client, job, out, as_json)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: Annotated[str | None, URL] = None,
                key: Annotated[str | None, KEY] = None) -> None:
    """Cancel a queued or running job (a finished one stays as it is)."""
    with Client(url, key) as client:
        job = client.cancel(job_id)
    typer.echo(f"job {job.id} {job.status}")


@jobs_app.command("delete")
def jobs_delete(job_id: str, url: Annotated[str | None, URL] = None,
                key: Annotated[str | None, KEY] = None) -> None:
    """Delete a job: its record, events and images (a queued or running one is canceled)."""
    with Client(url, key) as client:
        client.delete(job_id)
    typer.echo(f"job {job_id} deleted")


def register(app: typer.Typer) -> None:
    from service.cli_finetune import delete_model, finetune

    app.command()(submit)
    app.command("models")(models)
    app.command()(finetune)
    app.command("delete-model")(delete_model)
    app.add_typer(jobs_app, name="jobs")
