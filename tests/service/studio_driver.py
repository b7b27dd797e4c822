"""Driving the web studio in Debian's Chromium through playwright (no browser download):
launching it with every request off the service refused, and the few steps every browser
test takes (sign in, pick a kind and model, run, wait for an outcome)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SHOTS = os.environ.get("CONVOY_STUDIO_SHOTS")  # a folder: save each result page there


def chromium_path() -> str:
    """Chromium's executable; skip without it (fail under CI=true: CI installs it)."""
    path = os.environ.get("CONVOY_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if IN_CI:
            pytest.fail("the browser tests need Debian's chromium and the playwright package")
        pytest.skip("no chromium or playwright here")
    return path


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def offline_page(b: Any, base: str, refused: list[str]) -> Any:
    """A page in a fresh context (its own session storage) that may reach only ``base``;
    every other request is aborted and recorded in ``refused``."""
    context = b.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors

    def route(r: Any) -> None:
        if r.request.url.startswith(base):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page


def sign_in(page: Any, base: str, key: str | None) -> None:
    page.goto(base + "/")
    if key is not None:
        page.fill("#key", key)
        page.click("#key-form button")
    page.wait_for_selector(".tab")


def choose(page: Any, kind: str, model: str) -> None:
    page.click(f".tab[data-kind={kind}]")
    page.select_option("#model", model)
    page.wait_for_function(f"document.querySelector('#model').value === '{model}'")


def submit(page: Any, keys_on: str | None = None) -> str:
    """Click Run (or press Ctrl+Enter in the field ``keys_on``); return the new job's id
    once the page follows it."""
    before = page.inner_text("#job-id")
    if keys_on:
        page.press(keys_on, "Control+Enter")
    else:
        page.click("#run")
    page.wait_for_function("(before) => { const t = document.querySelector('#job-id').textContent;"
                           " return t && t !== before; }", arg=before)
    return str(page.inner_text("#job-id"))


def run_and_wait(page: Any, status: str = "succeeded", timeout_ms: int = 120_000) -> str:
    job_id = submit(page)
    page.wait_for_selector(f"#status.{status}", timeout=timeout_ms)
    if status == "succeeded":  # the status event comes first; the result is drawn after it
        page.wait_for_selector("#result [data-result]")
    return job_id


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"studio-{name}.png"), full_page=False)


def input_images(folder: Path) -> dict[str, Path]:
    """A held-out digit (label 7 among them), a shapes scene and a second digit, as PNGs."""
    from models.data import shapes
    from models.data.digits import load_digits_split
    from models.images import to_pil

    _, _, x, y = load_digits_split(32)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    seven = next(i for i in range(len(y)) if int(y[i]) == 7)
    three = next(i for i in range(len(y)) if int(y[i]) == 3)
    for name, index in (("digit7", seven), ("digit3", three)):
        to_pil(x[index]).save(folder / f"{name}.png")
        out[name] = folder / f"{name}.png"
    scene, _ = shapes.make_scenes(1, seed=4242)
    to_pil(scene[0]).save(folder / "scene.png")
    out["scene"] = folder / "scene.png"
    return out
