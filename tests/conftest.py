"""Shared fixtures: Redis databases owned by tests, and real service processes."""

from __future__ import annotations

import os

import pytest

REDIS_HOST = os.environ.get("CONVOY_TEST_REDIS", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def redis_db_url(db: int) -> str:
    """A flushed Redis database that this test run owns; skip (fail under CI) without Redis."""
    import redis

    url = f"{REDIS_HOST}/{db}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.flushdb()
        client.close()
    except redis.ConnectionError:
        if IN_CI:
            pytest.fail(f"Redis is required under CI=true and is not reachable at {url}")
        pytest.skip(f"no Redis at {url}")
    return url


@pytest.fixture
def redis_url() -> str:
    return redis_db_url(11)


pytest_plugins = ["tests.fixtures"]
