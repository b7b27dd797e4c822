"""The Celery app: JSON only, late acks, one message prefetched per thread, routed by queue.

Embedded mode uses kombu's filesystem transport under the data dir (polled every
``poll_interval_s``); distributed mode uses Redis, with a visibility timeout above the
longest job a submission may ask for.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from celery import Celery

from core.settings import Settings, private_dir

TASK = "convoy.run_job"


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    if settings.redis_url:
        return settings.redis_url, {
            "visibility_timeout": int(settings.max_job_timeout_s * settings.max_attempts + 600),
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
        }
    folder = private_dir(private_dir(settings.data_dir).resolve() / "broker")
    (folder / "processed").mkdir(mode=0o700, exist_ok=True)
    (folder / "control").mkdir(mode=0o700, exist_ok=True)
    return "filesystem://localhost/", {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": settings.poll_interval_s,
    }


def make_celery(settings: Settings) -> Celery:
    url, options = broker_options(settings)
    app = Celery("convoy", broker=url, set_as_current=False)
    app.conf.broker_transport = ("core.redis_transport:Transport" if settings.redis_url
                                 else "core.fs_transport:Transport")
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="convoy",
        task_create_missing_queues=True,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_heartbeat=0,
    )
    return app


def dispatch(app: Celery, job_ids: str | list[str], queue: str) -> None:
    """Send the message that carries a job (its id, nothing else) or jobs submitted
    together (their ids: the worker takes them at once, into the same batches)."""
    app.send_task(TASK, args=[job_ids], queue=queue, task_id=_task_id(job_ids))


def waiting_messages(app: Celery, queue: str) -> int:
    """How many messages wait in ``queue`` (not yet taken by a worker); 0 for a queue the
    broker does not know."""
    from kombu.exceptions import ChannelError

    with app.connection_for_read() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True)
                       .message_count)
        except ChannelError:
            return 0


def _task_id(job_ids: str | list[str]) -> str:
    first = job_ids if isinstance(job_ids, str) else f"{job_ids[0]}+{len(job_ids) - 1}"
    return f"{first}.{_nonce()}"


_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


def task_message(job_ids: str | list[str], queue: str) -> tuple[str, str]:
    """(the Redis list of ``queue``, the message of ``dispatch``) as kombu's Redis
    transport would push them: Celery's message protocol 2, JSON body, priority 0 (the list
    named after the queue).

    Built without the broker, so that the Redis store can push it in the same atomic step
    that records the jobs: an accepted job is never left without its message, and a
    submission costs one round trip instead of three."""
    task_id = _task_id(job_ids)
    body = json.dumps([[job_ids], {}, _EMBED]).encode()
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": TASK, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": repr([job_ids])[:200], "kwargsrepr": "{}", "origin": _ORIGIN,
            "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }
    return queue, json.dumps(message)


def _nonce() -> str:
    import secrets

    return secrets.token_hex(4)
