"""The web studio in a real browser (Debian's Chromium), against a real API and worker:
every built-in kind through its form, live progress and previews, cancel, reattaching
after a reload, errors where they happen, history, and offline API docs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures import Service
from tests.service.studio_driver import (
    browser,
    choose,
    input_images,
    offline_page,
    run_and_wait,
    shot,
    sign_in,
    submit,
)

pytestmark = pytest.mark.slow
KEY = "studio-key-1"


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The API with an API key and one worker serving the built-in models and `sleepy`."""
    svc = Service(tmp_path_factory.mktemp("studio"), None, CONVOY_API_KEYS=f"ann:{KEY}")
    try:
        svc.start_api()
        svc.start_worker(False)
        svc._wait(lambda: httpx.get(f"{svc.url}/readyz", timeout=2).status_code == 200, "worker")
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as b:
        yield b


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return input_images(tmp_path_factory.mktemp("studio-inputs"))


@pytest.fixture
def page(chromium: Any, studio: Service) -> Iterator[Any]:
    refused: list[str] = []
    p = offline_page(chromium, studio.url, refused)
    sign_in(p, studio.url, KEY)
    yield p
    assert not p.errors, p.errors
    assert not refused, f"the page reached off the service: {refused}"
    p.context.close()


def canvas_sum(page: Any) -> int:
    return int(page.evaluate("""() => { const c = document.querySelector('canvas[data-artifact=overlay]');
        return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.reduce((a, b) => a + b, 0); }"""))


def test_classify_shows_labelled_bars_and_clears_its_error(page: Any, images: dict) -> None:
    choose(page, "classify", "lenet5-digits")
    page.click("#run")  # no image yet: the form says so, next to the form
    page.wait_for_selector("#form-error:not([hidden])")
    assert "required" in page.inner_text("#form-error")
    page.set_input_files("input[data-field=image]", str(images["digit7"]))
    page.wait_for_selector(".drop-preview:not([hidden])")
    page.fill("#f-top_k", "3")
    run_and_wait(page)
    assert page.is_hidden("#form-error")
    bars = page.locator("[data-result=classify] .bar-row")
    assert bars.count() == 3
    assert bars.first.locator(".bar-label").inner_text() == "7"
    width = bars.first.locator(".bar-fill").evaluate("e => parseFloat(e.style.width)")
    assert width > 50
    shot(page, "classify")


def test_segment_overlay_legend_opacity_and_raw_mask(page: Any, images: dict) -> None:
    choose(page, "segment", "unet-shapes")
    page.set_input_files("input[data-field=image]", str(images["scene"]))
    run_and_wait(page)
    legend = page.locator("[data-result=segment] .legend tr[data-class]")
    assert [legend.nth(i).get_attribute("data-class") for i in range(legend.count())] == \
        ["background", "circle", "square", "triangle", "star"]
    shares = [float(legend.nth(i).locator("td").nth(3).inner_text().rstrip("%"))
              for i in range(legend.count())]
    assert abs(sum(shares) - 100) < 0.5 and shares[0] < 100
    swatch = legend.nth(1).locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor")
    assert swatch == "rgb(230, 25, 75)", swatch  # the circle's overlay colour names it
    page.wait_for_function("document.querySelector('canvas[data-artifact=overlay]').width === 64")
    before = canvas_sum(page)
    page.locator("#opacity").fill("100")
    page.wait_for_function(f"() => {{ const c = document.querySelector('canvas[data-artifact=overlay]');"
                           f" return c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
                           f".reduce((a, b) => a + b, 0) !== {before}; }}")
    mask = page.get_by_text("Raw mask")
    assert mask.get_attribute("download") == "mask.png"
    page.wait_for_function("[...document.querySelectorAll('a.download')].every(a => a.href.startsWith('blob:'))")
    page.locator("#opacity").fill("50")
    shot(page, "segment")


def test_reconstruct_side_by_side_with_psnr(page: Any, images: dict) -> None:
    choose(page, "reconstruct", "vae-digits")
    page.set_input_files("input[data-field=image]", str(images["digit3"]))
    run_and_wait(page)
    metric = page.inner_text("[data-result=reconstruct] .metric")
    assert metric.startswith("PSNR ") and float(metric.split()[1]) > 10
    page.wait_for_function("document.querySelector('img[data-artifact=\"reconstruction.png\"]').naturalWidth === 32")
    assert page.locator("[data-result=reconstruct] img[alt=input]").count() == 1
    shot(page, "reconstruct")


def test_sample_grid_by_seed_and_vae_interpolation(page: Any, images: dict) -> None:
    choose(page, "sample", "dcgan-digits")
    page.fill("#f-n", "6")
    page.fill("#f-seed", "40")
    page.select_option("#f-class_label", "5")
    run_and_wait(page)
    captions = page.locator("[data-result=images] figcaption").all_inner_texts()
    assert [c.split()[1] for c in captions] == ["40", "41", "42", "43", "44", "45"]
    shot(page, "sample")
    choose(page, "sample", "vae-digits")
    page.set_input_files("input[data-field='interpolate_between.0']", str(images["digit3"]))
    page.set_input_files("input[data-field='interpolate_between.1']", str(images["digit7"]))
    page.fill("#f-steps", "9")
    run_and_wait(page)
    assert page.locator("[data-result=path] .strip img").count() == 9
    page.locator("#frame").fill("8")
    page.wait_for_function("document.querySelector('[data-result=path] label').textContent.includes('frame 9 of 9')")
    page.locator("#frame").fill("4")
    shot(page, "interpolate")


def test_generate_with_class_dice_and_previews(page: Any) -> None:
    choose(page, "generate", "ddpm-digits")
    assert page.locator("#f-prompt").count() == 0  # a class-conditional model: no prompt field
    page.select_option("#f-class_label", "3")
    page.fill("#f-steps", "12")
    page.fill("#f-n", "4")
    page.click("button.dice")
    seed = int(page.input_value("#f-seed"))
    run_and_wait(page)
    captions = page.locator("[data-result=images] figcaption").all_inner_texts()
    assert [int(c.split()[1]) for c in captions] == [seed + i for i in range(4)]
    assert page.locator("#preview img").count() == 0  # the result replaces the previews
    page.locator("[data-result=images] img").first.click()
    page.wait_for_selector("#lightbox:not([hidden])")
    page.keyboard.press("Escape")
    shot(page, "generate")


def test_previews_arrive_before_the_end_and_progress_moves(page: Any) -> None:
    choose(page, "generate", "sleepy")
    page.fill("#f-steps", "80")
    page.fill("#f-preview_every", "4")
    submit(page)
    page.wait_for_selector("#status.running")
    seen: list[float] = []
    preview_before_end = False
    while not page.locator("#status.succeeded").count():
        value = float(page.eval_on_selector("#progress", "p => p.value / p.max"))
        if not seen or value != seen[-1]:
            seen.append(value)
        if page.locator("#preview img").count() and page.locator("#status.running").count():
            if not preview_before_end:
                shot(page, "running")
            preview_before_end = True
        time.sleep(0.15)
    assert preview_before_end, "no preview was shown while the job ran"
    assert len([v for v in seen if 0 < v < 1]) >= 3, seen
    assert seen == sorted(seen)
    assert page.eval_on_selector("#progress", "p => p.value === p.max")


def test_cancel_stops_a_running_job(page: Any) -> None:
    choose(page, "generate", "sleepy")
    page.fill("#f-steps", "1000")
    submit(page, keys_on="#f-steps")  # Ctrl+Enter runs like the button
    page.wait_for_function("document.querySelector('#progress').value > 2")
    page.click("#cancel")
    page.wait_for_selector("#status.canceled", timeout=30_000)
    assert page.is_disabled("#cancel")


def test_a_queued_job_shows_its_position(page: Any) -> None:
    choose(page, "generate", "parked")  # a queue no test worker takes: the job stays queued
    submit(page)
    page.wait_for_selector("#status.queued")
    page.wait_for_function(
        "document.querySelector('#progress-text').textContent.includes('position 1')",
        timeout=30_000)
    page.click("#cancel")
    page.wait_for_selector("#status.canceled", timeout=30_000)


def test_reload_reattaches_to_the_running_job(page: Any, studio: Service) -> None:
    choose(page, "generate", "sleepy")
    page.fill("#f-steps", "1000")
    submit(page)
    page.wait_for_function("document.querySelector('#progress').value > 3")
    job_id = page.inner_text("#job-id")
    resumed: list[str | None] = []
    page.on("request", lambda r: resumed.append(r.headers.get("last-event-id"))
            if r.url.endswith(f"/v1/jobs/{job_id}/events") else None)
    page.reload()
    page.wait_for_selector(f"#job-id:text-is('{job_id}')")
    page.wait_for_selector("#status.running")
    at_reload = float(page.eval_on_selector("#progress", "p => p.value"))
    page.wait_for_function(f"document.querySelector('#progress').value > {at_reload + 2}")
    assert resumed and resumed[0] is not None and int(resumed[0]) > 3, resumed
    page.click("#cancel")
    page.wait_for_selector("#status.canceled", timeout=30_000)


def test_history_reuse_and_large_images(page: Any, studio: Service) -> None:
    with studio.client(KEY) as c:
        r = c.post("/v1/jobs", json={"kind": "generate", "model": "ddpm-digits", "input": {
            "class_label": "8", "steps": 25, "n": 2, "seed": 99, "scheduler": "ddim"}},
            headers={"Prefer": "wait=60"})
        assert r.status_code == 200, r.text
    page.click("#history-refresh")
    card = page.locator(f".job-card[data-job='{r.json()['id']}']")
    card.wait_for()
    assert page.locator(".job-card").first.get_attribute("data-job") == r.json()["id"]  # newest first
    assert "scheduler: ddim" in card.inner_text()
    card.locator("img.thumb").click()
    page.wait_for_selector("#lightbox:not([hidden])")
    page.click("#lightbox")
    card.locator("button.reuse").click()
    assert page.locator(".tab[data-kind=generate]").get_attribute("aria-selected") == "true"
    assert page.input_value("#model") == "ddpm-digits"
    assert page.input_value("#f-steps") == "25" and page.input_value("#f-seed") == "99"
    assert page.input_value("#f-scheduler") == "ddim" and page.input_value("#f-class_label") == "8"
    page.evaluate("document.querySelector('#history').scrollIntoView()")
    shot(page, "history")


def test_wrong_key_is_shown_where_it_is_typed(chromium: Any, studio: Service) -> None:
    refused: list[str] = []
    page = offline_page(chromium, studio.url, refused)
    page.goto(studio.url + "/")
    page.wait_for_selector("#key-error:not([hidden])")  # no key on a server with keys
    page.fill("#key", "not-the-key")
    page.click("#key-form button")
    page.wait_for_function("document.querySelector('#key-error').textContent.includes('unknown API key')")
    assert page.locator(".tab").count() == 0
    page.fill("#key", KEY)
    page.click("#key-form button")
    page.wait_for_selector(".tab")
    assert page.is_hidden("#key-error")
    page.wait_for_selector("#workers tr[data-worker]")
    assert not refused and not page.errors
    page.context.close()


def test_docs_and_studio_render_without_network_or_key(chromium: Any, tmp_path: Path) -> None:
    svc = Service(tmp_path)  # no keys, no worker: the pages need neither
    try:
        svc.start_api()
        refused: list[str] = []
        page = offline_page(chromium, svc.url, refused)
        page.goto(svc.url + "/docs")
        page.wait_for_selector(".opblock")
        paths = httpx.get(f"{svc.url}/openapi.json").json()["paths"]
        wanted = {(m.upper(), p) for p, ops in paths.items() for m in ops if m != "parameters"}
        shown = set(zip(page.locator(".opblock-summary-method").all_inner_texts(),
                        page.locator(".opblock-summary-path").all_inner_texts(), strict=True))
        assert {(m, p.replace("\u200b", "")) for m, p in shown} == wanted
        page.goto(svc.url + "/redoc")
        page.wait_for_selector("[data-section-id^='operation/']")
        sections = page.locator("[data-section-id^='operation/']")
        ids = {sections.nth(i).get_attribute("data-section-id") for i in range(sections.count())}
        assert {i.split("/", 1)[1] for i in ids} == \
            {op["operationId"] for ops in paths.values() for op in ops.values() if "operationId" in op}
        page.goto(svc.url + "/")
        page.wait_for_selector(".tab")  # the studio without a key on a keyless server
        assert page.is_hidden("#key-error")
        assert not refused, refused
        page.context.close()
    finally:
        svc.stop()
