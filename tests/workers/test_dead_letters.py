"""What a worker sets aside instead of dying on: queue entries that are not messages."""

from __future__ import annotations

import json

import pytest

from core.celery_app import task_message
from core.dead_letters import MalformedMessage, read_message


def _envelope(**change: object) -> bytes:
    _, good = task_message(["a", "b"], "convoy")
    envelope = json.loads(good)
    envelope.update(change)
    return json.dumps(envelope).encode()


def test_a_message_of_dispatch_reads_back() -> None:
    _, good = task_message("a", "convoy")
    assert read_message(good)["headers"]["task"] == "convoy.run_job"


@pytest.mark.parametrize(("raw", "why"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"{}", "delivery tag"),
    (_envelope(properties={"delivery_tag": "t"}), "delivery info"),
    (_envelope(headers=[1]), "headers"),
    (_envelope(body=17), "not a string"),
    (_envelope(body="%%% not base64 %%%"), "not base64"),
])
def test_entries_that_are_not_messages_are_named_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage, match=why):
        read_message(raw)
