"""The client commands of ``convoy``: inputs typed from the kind's schema, ``@path`` images,
one-line errors (never a traceback), ``convoy models`` within 80 columns, and ``submit``,
``jobs list|get|events|wait|cancel|delete`` against the real service."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.catalog import Catalog
from service.cli_client import UsageError, format_models, parse_inputs
from service.client import ModelInfo
from tests.fixtures import Service

ROOT = Path(__file__).resolve().parents[2]


def convoy(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOY_")}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="80")
    if url:
        env["CONVOY_URL"] = url
    return subprocess.run([sys.executable, "-m", "service.cli", *args], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_inputs_are_typed_from_the_kinds_schema(tmp_path: Path) -> None:
    data = parse_inputs("generate", ["class_label=7", "n=4", "guidance_scale=2", "steps=20",
                                     "prompt=a 7, twice"])
    assert data == {"class_label": "7", "n": 4, "guidance_scale": 2.0, "steps": 20,
                    "prompt": "a 7, twice"}
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG fake")
    encoded = base64.b64encode(png.read_bytes()).decode()
    assert parse_inputs("classify", [f"image=@{png}", "top_k=3"]) == {"image": encoded,
                                                                      "top_k": 3}
    assert parse_inputs("classify", [], image=png) == {"image": encoded}
    both = parse_inputs("sample", [f"interpolate_between=@{png}", f"interpolate_between=@{png}"])
    assert both == {"interpolate_between": [encoded, encoded]}
    for kind, items, words in (
            ("generate", ["n=four"], "valid integer"),
            ("generate", ["colour=red"], "takes no 'colour'"),
            ("classify", ["image=@/no/such.png"], "no such file"),
            ("paint", [], "unknown kind"),
            ("generate", ["n"], "key=value")):
        with pytest.raises(UsageError, match=words):
            parse_inputs(kind, items)


def test_image_files_become_parts_of_a_multipart_submission(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG fake")
    files: dict[str, Path] = {}
    data = parse_inputs("generate", [f"image=@{png}", f"mask=@{png}", "n=2"], files=files)
    assert data == {"image": {"file": "image"}, "mask": {"file": "mask"}, "n": 2}
    assert files == {"image": png, "mask": png}
    files = {}
    both = parse_inputs("sample", [f"interpolate_between=@{png}", f"interpolate_between=@{png}"],
                        files=files)
    assert both == {"interpolate_between": [{"file": "interpolate_between-0"},
                                            {"file": "interpolate_between-1"}]}
    assert list(files) == ["interpolate_between-0", "interpolate_between-1"]
    with pytest.raises(UsageError, match="no such file"):
        parse_inputs("classify", ["image=@/no/such.png"], files={})


def test_models_listing_fits_80_columns_and_shows_labels() -> None:
    models = [ModelInfo.model_validate(e.public()) for e in Catalog.load()]
    text = format_models(models)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "labels (10): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in text
    assert "white" in text and "lenet5-digits" in text


def test_errors_are_one_line_without_a_server_or_a_file(tmp_path: Path) -> None:
    one_line_error(convoy("models", "--url", "http://127.0.0.1:9"), "cannot reach")
    one_line_error(convoy("jobs", "list", url="http://127.0.0.1:9"), "cannot reach")
    one_line_error(convoy("submit", "classify", "-m", "lenet5-digits", "--image",
                          str(tmp_path / "none.png"), "--wait", url="http://127.0.0.1:9"),
                   "no such file", "none.png")
    one_line_error(convoy("submit", "generate", "-m", "ddpm-digits", "--out", str(tmp_path)),
                   "--out", "--wait")
    version = convoy("--version")
    assert version.returncode == 0 and version.stdout.startswith("convoy ")


@pytest.mark.slow
def test_submit_and_jobs_commands(service: Service, tmp_path: Path) -> None:
    url = service.url
    one_line_error(convoy("jobs", "get", "no-such-job", url=url), "404", "not_found")
    one_line_error(convoy("submit", "generate", "-m", "tiny-ddpm", "-i", "n=99", url=url),
                   "422", "invalid_input")
    one_line_error(convoy("submit", "generate", "-m", "ddpm-digits", "-i", "class_label=x",
                          "-i", "steps=2", url=url), "422", "class_label")

    out = tmp_path / "out"
    done = convoy("submit", "generate", "-m", "ddpm-digits", "-i", "class_label=7", "-i", "n=2",
                  "-i", "steps=2", "-i", "seed=1", "--wait", "--out", str(out), url=url)
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and f"saved {out / 'image-1.png'}" in done.stdout
    assert (out / "image-0.png").read_bytes().startswith(b"\x89PNG")

    listed = convoy("jobs", "list", "--kind", "generate", "--limit", "1", "--json", url=url)
    job_id = json.loads(listed.stdout)[0]["id"]
    record = json.loads(convoy("jobs", "get", job_id, url=url).stdout)
    assert record["input"]["class_label"] == "7" and record["status"] == "succeeded"
    events = convoy("jobs", "events", job_id, url=url).stdout.strip().splitlines()
    assert events[0].startswith("1 status") and events[-1].endswith('{"status": "succeeded"}')
    resumed = convoy("jobs", "events", job_id, "--last-event-id", str(len(events) - 1), url=url)
    assert resumed.stdout.strip().splitlines() == events[-1:]
    waited = convoy("jobs", "wait", job_id, "--json", url=url)
    assert json.loads(waited.stdout)["id"] == job_id

    queued = convoy("submit", "generate", "-m", "parked", "-i", "steps=2", url=url)
    parked_id = queued.stdout.split()[1]
    assert convoy("jobs", "cancel", parked_id, url=url).stdout.strip() == \
        f"job {parked_id} canceled"
    text = convoy("jobs", "list", "--limit", "3", url=url).stdout.splitlines()
    assert text and all(len(line) <= 100 for line in text) and parked_id in text[0]
    assert convoy("jobs", "delete", job_id, url=url).stdout.strip() == f"job {job_id} deleted"
    one_line_error(convoy("jobs", "get", job_id, url=url), "404", "not_found")


def test_the_models_listing_leads_with_the_headline_figures() -> None:
    from service.cli_client import _figures

    vae = {"epochs": 40, "images_seen": 81920, "kl": 93.1, "mse": 0.004, "psnr": 24.1,
           "shape_kept": 0.97, "train_seconds": 3000.0}
    assert _figures(vae) == "psnr=24.1, shape_kept=0.97"
    assert _figures({"conditional_accuracy": 1.0, "batch_size": 64, "frechet_distance": 3.7}
                    ) == "conditional_accuracy=1, frechet_distance=3.7"
