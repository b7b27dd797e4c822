"""The README's examples run as written: every ``sh`` and ``python`` block, in order, against
a service started the way ``make serve`` starts it (``convoy serve`` from the virtual
environment, API and one worker, embedded mode), on a port of the test's own.

The only change made to a block is the port: ``127.0.0.1:8000`` becomes the test's address
(and ``CONVOY_URL`` says the same to the CLI). Blocks run one after another in one scratch
folder, as a reader pasting them would, so files one block writes (``digit.png``) serve the
next. A block the test cannot run here is preceded by ``<!-- not run: why -->``; there are
at most a few, and what they name (make targets, compose targets) is checked to exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```",
                   re.DOTALL)
RUNNABLE = ("sh", "bash", "python")


def blocks() -> list[tuple[str, str, str | None]]:
    """(language, body, why it is not run) of each runnable block, in order."""
    return [(m["lang"], m["body"], m["why"]) for m in FENCE.finditer(README.read_text())
            if m["lang"] in RUNNABLE]


def test_readme_links_the_contract_inside_the_repository() -> None:
    text = README.read_text()
    assert "](docs/api.md)" in text and (ROOT / "docs" / "api.md").exists()
    assert "../shared" not in text


def test_the_contract_names_every_route_and_operation(tmp_path: Path) -> None:
    from core.settings import Settings
    from service.app import create_app

    doc = create_app(Settings(data_dir=tmp_path, redis_url=None)).openapi()
    contract = (ROOT / "docs" / "api.md").read_text()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert path.replace("{job_id}", "{id}") in contract, (method, path)
            assert f"`{op['operationId']}`" in contract, op["operationId"]


def test_blocks_not_run_say_why_and_name_what_exists() -> None:
    skipped = [(body, why) for _, body, why in blocks() if why is not None]
    assert 1 <= len(skipped) <= 2, [why for _, why in skipped]
    makefile = (ROOT / "Makefile").read_text()
    for body, why in skipped:
        assert why.strip()
        for target in re.findall(r"^make (\w+)", body, re.MULTILINE):
            assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"no make target {target}"
        if "docker compose" in body:
            compose = (ROOT / "docker-compose.yml").read_text()
            dockerfile = (ROOT / "Dockerfile").read_text()
            for target in re.findall(r"target: (\w+)", compose):
                assert re.search(rf"^FROM .* AS {target}$", dockerfile, re.MULTILINE), target
            assert (ROOT / ".dockerignore").exists()
    assert sum(1 for _, _, why in blocks() if why is None) >= 6


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A scratch folder with ``.venv`` (this test's environment) and the service's address."""
    work = tmp_path_factory.mktemp("readme")
    venv = Path(sys.executable).parent.parent
    (work / ".venv").symlink_to(venv)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONVOY_") and k != "VIRTUAL_ENV"}
    env.update(PYTHONPATH=str(ROOT), CONVOY_DATA_DIR=str(work / "data"),
               CONVOY_URL=f"http://127.0.0.1:{port}")
    log = (work / "serve.log").open("wb")  # the server writes it until the end
    proc = subprocess.Popen([str(venv / "bin" / "convoy"), "serve", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{env['CONVOY_URL']}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                (work / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
        yield work, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_readme_example_runs_as_written(served: tuple[Path, dict[str, str]]) -> None:
    work, env = served
    port = env["CONVOY_URL"].rsplit(":", 1)[1]
    outputs = []
    for lang, body, why in blocks():
        if why is not None:
            continue
        code = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        if lang == "python":
            script = work / f"block-{len(outputs)}.py"
            script.write_text(code)
            argv = [str(work / ".venv" / "bin" / "python"), str(script)]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", code]
        done = subprocess.run(argv, check=False, cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"block failed:\n{body}\n--- out\n{done.stdout[-2000:]}" \
                                     f"\n--- err\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr
        outputs.append(done.stdout)
    text = "\n".join(outputs)
    # What a reader would check by eye: the jobs finished and their files are there.
    assert '"status":"succeeded"' in text.replace(" ", "")
    assert "event: status" in text and '"invalid_input"' in text
    for name in ("digit.png", "out/image-0.png", "out/image-3.png", "three.png", "keys.txt"):
        assert (work / name).exists(), name
    assert (work / "three.png").read_bytes().startswith(b"\x89PNG")
