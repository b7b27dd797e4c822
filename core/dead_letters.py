"""Broker messages no worker can read are set aside, never fatal.

kombu parses a message as it takes it off the queue and builds its envelope next: a queue
entry that is not JSON, an envelope without its properties, or a body that is not base64
raises there, outside any task, and Celery ends the worker ("Unrecoverable error").
Anyone who can write to the queue (a stray ``LPUSH``, a file dropped in the broker folder)
could then stop every worker for good. So the transports read each entry here first; a
malformed one is logged and kept aside (a ``dead`` folder, or a capped Redis list) for a
person to look at, and the worker takes the next.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

DEAD_LIST = "convoy:dead"  # the Redis list of set-aside messages (newest first)
DEAD_KEEP = 1000  # how many of them are kept
DEAD_FOLDER = "dead"  # under the embedded broker folder


class MalformedMessage(ValueError):
    """A queue entry that is not a message of Celery's protocol 2 in JSON."""


def read_message(raw: bytes | str) -> dict[str, Any]:
    """The envelope of a queue entry, checked as far as kombu relies on it before Celery
    sees it (Celery itself refuses, without stopping, a body of another content type or
    one that names no task)."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedMessage(f"not JSON ({e})") from None
    if not isinstance(payload, dict):
        raise MalformedMessage("not a JSON object")
    props = payload.get("properties")
    if not isinstance(props, dict) or not isinstance(props.get("delivery_tag"), str):
        raise MalformedMessage("no properties with a delivery tag")
    if not isinstance(props.get("delivery_info"), dict):
        raise MalformedMessage("no delivery info")
    if not isinstance(payload.get("headers"), dict | None):
        raise MalformedMessage("headers that are not an object")
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        raise MalformedMessage("a body that is not a string")
    if body and props.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("a body that is not base64") from None
    return payload


def report(where: str, why: MalformedMessage, raw: bytes | str) -> None:
    log.warning("a malformed message on %s was set aside (%s): %.200r", where, why, raw)
