"""All of convoy's settings, in one place (environment variables with the ``CONVOY_`` prefix)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class UnsafeSettings(ValueError):
    """A combination of settings that convoy refuses to start with."""


class KeyLimits(BaseModel):
    """What one owner's key may use (``CONVOY_KEY_LIMITS``, by owner)."""

    max_priority: int | None = None  # the highest job priority (else CONVOY_MAX_PRIORITY)
    quota_device_s: float | None = None  # device-seconds per CONVOY_QUOTA_PERIOD_S (else none)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVOY_", extra="ignore")

    # Modes and places
    redis_url: str | None = None  # unset: embedded mode (SQLite + local Celery transport)
    data_dir: Path = Path(".convoy")  # embedded store, broker folders
    catalog: Annotated[list[Path], NoDecode] = Field(default_factory=list)  # extra catalog files, ':' or ',' separated
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # modules that register predictor families

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: str | None = None  # owner1:key1,owner2:key2
    api_keys_file: Path | None = None  # one owner:key per line
    insecure: bool = False  # allow a public bind without API keys
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_wait_s: float = 60.0  # bound of Prefer: wait=N
    rate_limit_per_s: float = 50.0  # per API key, token bucket refill
    rate_limit_burst: int = 200
    max_queued_per_owner: int = 1000
    max_queue_depth: int = 10000
    max_stored_bytes_per_owner: int = 2 * 1024**3  # inputs and artifacts an owner keeps within retention; 0: no bound
    max_streams_per_key: int = 64  # open event streams plus Prefer: wait submissions per key
    decode_budget_pixels: int = 4096 * 4096  # pixels being decoded at once in a process
    decode_wait_s: float = 2.0  # a decode over the budget waits this long, then 503
    input_scale: int = 16  # a model takes images up to this many times its input side
    max_error_details: int = 20  # validation errors listed in a 422
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this
    body_timeout_s: float = 60.0  # its body must arrive within this once the headers are in

    # Blobs: inputs, previews and outputs (see core/blobs.py)
    blobs: str | None = None  # s3://bucket/prefix, or a folder; unset: <data_dir>/blobs
    s3_endpoint_url: str | None = None  # unset: AWS_ENDPOINT_URL or AWS S3 itself
    s3_region: str | None = None  # unset: AWS_DEFAULT_REGION / AWS_REGION
    s3_access_key_id: str | None = None  # unset: AWS_ACCESS_KEY_ID, ~/.aws, instance role
    s3_secret_access_key: str | None = None  # unset: AWS_SECRET_ACCESS_KEY, ...
    artifact_redirect: bool = False  # S3: artifact reads answer 307 to a presigned URL
    presign_expiry_s: int = Field(300, ge=1, le=7 * 24 * 3600)  # lifetime of those URLs
    inline_image_bytes: int = 16 * 1024  # base64 inputs longer than this move to the blob store

    # Jobs
    retention_s: int = 24 * 3600  # records, events and artifacts expire after this
    max_attempts: int = 3  # a job that kills its worker this many times fails worker_lost
    job_timeout_s: float = 600.0  # default per-job deadline
    max_job_timeout_s: float = 3600.0  # bound of a submission's timeout_s

    # Workers
    worker_concurrency: int = 0  # jobs a worker takes at once (threads); 0: its largest max_batch, at least 8
    heartbeat_s: float = 1.0  # worker heartbeat interval
    worker_dead_after_s: float = 5.0  # a worker silent this long is gone; its jobs requeue
    batching: bool = True  # micro-batch concurrent jobs of the same model
    step_batching: bool = True  # generation jobs join a running sampling loop at its next step, where the model allows (docs/operations.md)
    preload: Annotated[list[str], NoDecode] = Field(default_factory=list)  # models loaded at worker start
    memory_budget: str | None = None  # per device: bytes ("2GB") or fraction ("0.8")
    poll_interval_s: float = 0.02  # embedded broker polling
    torch_threads: int = 0  # torch CPU threads per worker; 0: half the cores (the rest run the queue)
    store_patience_s: float = 600.0  # a worker waits this long for a down store to record a job
    worker_restart_max_s: float = 30.0  # convoy serve restarts a dead worker child after a delay doubling up to this
    stranded_after_s: float = 60.0  # a job queued this long while its queue holds no message is sent again
    switch_interval_s: float = 0.005  # GIL hand-over interval of API and worker processes (Python's default)

    # Scheduling and metering
    max_priority: int = 0  # the highest priority a submission may ask for (0..9), unless key_limits says
    key_limits: dict[str, KeyLimits] = Field(default_factory=dict)  # JSON: {"owner": {"max_priority": 5, "quota_device_s": 3600}}
    starvation_s: float = 300.0  # a job queued this long runs ahead of every priority
    quota_period_s: int = 86400  # device-second quotas count per period of this length (UTC-aligned)
    queue_events_s: float = 1.0  # how often queued jobs' positions are checked for queue events

    # Webhooks
    webhook_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)  # networks a webhook may reach though not public ("127.0.0.1/32,10.0.0.0/8")
    webhook_retry_for_s: float = 3600.0  # a delivery is retried this long after its first attempt
    webhook_backoff_s: float = 1.0  # first retry delay; doubles per attempt (with jitter) up to webhook_backoff_max_s
    webhook_backoff_max_s: float = 300.0
    webhook_connect_timeout_s: float = 5.0
    webhook_read_timeout_s: float = 10.0
    webhook_poll_s: float = 0.5  # how often a worker looks for new webhook events and due deliveries

    @field_validator("catalog", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(p) for p in value.replace(",", ":").split(":") if p.strip()]
        return value

    @field_validator("preload", "plugins", "webhook_allow", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    def load_plugins(self) -> None:
        """Import the modules named in CONVOY_PLUGINS (they register predictor families)."""
        import importlib

        for module in self.plugins:
            importlib.import_module(module)

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    def keys(self) -> dict[str, str]:
        """API key → owner, from CONVOY_API_KEYS and CONVOY_API_KEYS_FILE."""
        lines: list[str] = []
        if self.api_keys:
            lines += self.api_keys.split(",")
        if self.api_keys_file is not None:
            lines += self.api_keys_file.read_text().splitlines()
        keys: dict[str, str] = {}
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            owner, sep, key = line.partition(":")
            if not sep or not owner.strip() or not key.strip():
                raise UnsafeSettings(f"API key entries must read owner:key, got {line[:20]!r}")
            key, owner = key.strip(), owner.strip()
            if keys.get(key, owner) != owner:
                raise UnsafeSettings(f"an API key is listed for two owners: {keys[key]!r} and "
                                     f"{owner!r}")
            keys[key] = owner
        return keys

    def check_bind(self, host: str) -> None:
        """Refuse a public bind address without API keys (unless insecure)."""
        if self.keys() or self.insecure or is_loopback(host):
            return
        raise UnsafeSettings(
            f"refusing to listen on {host} without API keys: set CONVOY_API_KEYS "
            "(owner:key,...) or CONVOY_API_KEYS_FILE, bind to 127.0.0.1, or pass --insecure"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def private_dir(path: Path) -> Path:
    """``path`` created if missing and readable by this user alone (0700): the data dir
    holds every owner's inputs and outputs."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` created if missing with mode 0600 (an existing one tightened to it)."""
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path


def new_id() -> str:
    """A random, unguessable id (about 160 bits) that never starts with ``-`` or ``_``,
    so that command lines take it as an argument, not an option."""
    token = secrets.token_urlsafe(20)
    return token if token[0].isalnum() else secrets.choice("abcdefghjkmnpqrstuvwxyz") + token[1:]


@lru_cache
def get_settings() -> Settings:
    return Settings()


def limits_of(settings: Settings, owner: str) -> KeyLimits:
    """The owner's limits, with the defaults filled in."""
    own = settings.key_limits.get(owner, KeyLimits())
    return KeyLimits(max_priority=settings.max_priority if own.max_priority is None
                     else own.max_priority, quota_device_s=own.quota_device_s)
