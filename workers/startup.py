"""Start-up checks of a Redis used as broker and store."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class RedisMisconfigured(RuntimeError):
    pass


def check_redis(url: str) -> None:
    """Refuse a Redis that may evict keys; warn when it keeps nothing on disk."""
    import redis

    r = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        policy = r.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
        aof = r.config_get("appendonly").get("appendonly", "no")
    except redis.ResponseError:  # CONFIG disabled (managed Redis): nothing to check
        return
    finally:
        r.close()
    if policy != "noeviction":
        raise RedisMisconfigured(
            f"Redis maxmemory-policy is {policy!r}: it may evict accepted jobs. Fix: "
            "`redis-cli CONFIG SET maxmemory-policy noeviction` (and set it in redis.conf)"
        )
    if aof != "yes":
        log.warning("Redis persistence (AOF) is off: a Redis restart loses queued jobs. "
                    "Enable it with `appendonly yes`.")
