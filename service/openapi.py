"""The OpenAPI document, completed: FastAPI writes the routes; this adds what no route's
return type names — the payload of each server-sent event type — so that a client generated
from ``/openapi.json`` can read the events as typed objects too."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from service.errors import add_request_models
from service.schemas import (
    EVENT_PAYLOADS,
    ClassifyOutput,
    FinetuneOutput,
    ImagesOutput,
    ReconstructOutput,
    SegmentOutput,
)

_REF = "#/components/schemas/{model}"
_OUTPUTS = (ClassifyOutput, SegmentOutput, ReconstructOutput, ImagesOutput, FinetuneOutput)


def _event_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """(component schemas, event type -> schema of its data)."""
    models = {*EVENT_PAYLOADS.values(), *_OUTPUTS}
    _, top = models_json_schema([(m, "serialization") for m in models], ref_template=_REF)
    by_type: dict[str, Any] = {name: {"$ref": _REF.format(model=m.__name__)}
                               for name, m in EVENT_PAYLOADS.items()}
    by_type["output"] = {"anyOf": [{"$ref": _REF.format(model=m.__name__)} for m in _OUTPUTS]}
    return top.get("$defs", {}), by_type


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                              description=app.description, tags=app.openapi_tags)
            add_request_models(doc)  # the submit route reads its body itself
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            defs, by_type = _event_schemas()
            for name, schema in defs.items():
                components.setdefault(name, schema)
            events = doc["paths"].get("/v1/jobs/{job_id}/events", {}).get("get")
            if events is not None:
                events["responses"]["200"]["content"]["text/event-stream"]["x-event-payloads"] = by_type
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
