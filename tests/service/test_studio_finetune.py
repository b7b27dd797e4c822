"""The studio's finetune form in a real browser: an archive picked, uploaded and trained on,
progress with loss and accuracy, the new model's figures, then the model tried under
classify without reloading the page."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures import Service
from tests.service.studio_driver import browser, choose, offline_page, shot, sign_in, submit

pytestmark = pytest.mark.slow
KEY = "studio-finetune-key"


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("studio-finetune"), None,
                  CONVOY_API_KEYS=f"fay:{KEY}")
    try:
        svc.start_api()
        svc.start_worker(False)
        svc.start_worker(False, "--queues", "train")
        svc._wait(lambda: httpx.get(f"{svc.url}/readyz", timeout=2).status_code == 200, "worker")
        yield svc
    finally:
        svc.stop()


def test_finetune_form_trains_on_an_archive_and_the_model_classifies(
        studio: Service, tmp_path: Path) -> None:
    from models.data.digits import load_digits_split
    from models.images import png_bytes, to_pil

    x, y, x_test, y_test = load_digits_split(32)
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for digit, label in ((0, "zero"), (1, "one")):
            for i, img in enumerate(x[y == digit][:12]):
                zf.writestr(f"{label}/{i}.png", png_bytes(to_pil(img)))
    one = tmp_path / "one.png"
    one.write_bytes(png_bytes(to_pil(x_test[y_test == 1][0])))

    with browser() as b:
        refused: list[str] = []
        page: Any = offline_page(b, studio.url, refused)
        sign_in(page, studio.url, KEY)
        choose(page, "finetune", "lenet5-digits")
        page.fill("#f-name", "studio-digits")
        page.select_option("#f-dataset", "(archive file)")
        page.set_input_files("input[data-field=dataset]", str(archive))
        page.fill("#f-epochs", "8")
        page.fill("#f-batch_size", "8")
        page.fill("#f-learning_rate", "0.003")
        page.fill("#f-seed", "1")
        submit(page)
        page.wait_for_function("document.querySelector('#progress-text').textContent"
                               ".includes('loss')")
        page.wait_for_selector("#status.succeeded", timeout=120_000)
        result = page.wait_for_selector("#result [data-result=finetune]")
        assert "studio-digits" in result.inner_text() and "one, zero" in result.inner_text()
        shot(page, "finetune")
        assert page.input_value("#f-name") == "studio-digits"  # the form keeps what ran

        choose(page, "classify", "studio-digits")  # listed without a reload
        page.set_input_files("input[data-field=image]", str(one))
        page.wait_for_selector(".drop-preview:not([hidden])")
        submit(page)
        page.wait_for_selector("#status.succeeded", timeout=60_000)
        bars = page.wait_for_selector("#result [data-result=classify]")
        assert bars.query_selector(".bar-label").inner_text() == "one"
        assert not page.errors, page.errors
        assert not refused, refused
