"""The Python SDK of convoy's HTTP API: ``Client`` (blocking) and ``AsyncClient`` (asyncio),
on httpx, with typed records (``JobRecord``, ``ModelInfo`` ...) and typed errors
(``NotFound``, ``InvalidInput`` ...). It needs neither torch nor the server's packages beyond
``service.schemas``; the ``convoy`` CLI and the tests use it."""

from service.client._base import TERMINAL, Event, artifacts
from service.client.aio import AsyncClient
from service.client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    ConvoyClientError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    WaitTimeout,
)
from service.client.sync import Client
from service.schemas import Artifact, JobList, JobRecord, ModelInfo, WorkerInfo

__all__ = [
    "TERMINAL", "ApiError", "Artifact", "AsyncClient", "Client", "Conflict", "ConnectionFailed",
    "ConvoyClientError", "Event", "InvalidInput", "JobList", "JobRecord", "ModelInfo",
    "NotFound", "PayloadTooLarge", "RateLimited", "Unauthorized", "Unavailable",
    "UnsupportedMediaType", "WaitTimeout", "WorkerInfo", "artifacts",
]
