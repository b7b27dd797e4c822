"""The built-in models through HTTP: their held-out figures come back through the API."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from models.catalog import Catalog
from tests.fixtures import Service
from tests.helpers import b64_png

pytestmark = pytest.mark.slow
SHAPES_CLASSIFIERS = ["alexnet-shapes", "vgg11-shapes", "googlenet-shapes", "resnet18-shapes"]
N = 200


def test_every_builtin_shapes_classifier_is_shipped() -> None:
    names = {e.name for e in Catalog.load()}
    assert set(SHAPES_CLASSIFIERS) <= names, "train them with `make weights`"


@pytest.mark.parametrize("model", SHAPES_CLASSIFIERS)
def test_shapes_classifier_accuracy_through_http(service: Service, model: str) -> None:
    from models.data.shapes import SEEDS, SHAPE_LABELS, make_classification
    from models.images import to_pil

    x, y = make_classification(N, seed=SEEDS["test"])
    images = [b64_png(to_pil(img)) for img in x]
    with service.client() as c:
        info = c.get(f"/v1/models/{model}")
        assert info.status_code == 200, f"{model} is not served"
        sidecar = info.json()["metrics"]["top1"]

        def one(image: str) -> str:
            r = c.post("/v1/jobs", json={"kind": "classify", "model": model,
                                         "input": {"image": image, "top_k": 1}},
                       headers={"Prefer": "wait=60"})
            assert r.status_code == 200, r.text
            return str(r.json()["output"]["predictions"][0]["label"])

        with cf.ThreadPoolExecutor(16) as pool:
            predicted = list(pool.map(one, images))
    accuracy = sum(p == SHAPE_LABELS[int(t)] for p, t in zip(predicted, y, strict=True)) / N
    assert sidecar >= 0.97
    assert abs(accuracy - sidecar) <= 0.04, (accuracy, sidecar)  # binomial noise at n=200
