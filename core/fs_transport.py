"""kombu's filesystem transport with atomic writes and malformed messages set aside, for
embedded mode.

The stock transport opens the message file under its final name and then writes it, so a
consumer polling at that moment can read an empty file and fail. Here a message is written
under a temporary name and renamed into place: a consumer sees a whole message or none.
Names carry a zero-padded timestamp so that lexical order is arrival order. A file that is
not a message (see ``core.dead_letters``) is moved to the ``dead`` folder beside them.
"""

from __future__ import annotations

import os
import time
import uuid
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from core.dead_letters import DEAD_FOLDER, MalformedMessage, read_message, report


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{time.time_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        tmp = os.path.join(self.data_folder_out, f".tmp-{uuid.uuid4()}")
        with open(tmp, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(tmp, os.path.join(self.data_folder_out, name))

    def _get(self, queue: str) -> Any:
        """The oldest message of ``queue``: its file is taken by a rename (one consumer
        wins it), read, and removed; a malformed one goes to the dead folder."""
        taken = os.path.join(self.data_folder_in, "processed")
        dead = os.path.join(self.data_folder_in, DEAD_FOLDER)
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != f"{queue}.msg":
                continue
            path = os.path.join(taken, filename)
            try:
                os.makedirs(taken, exist_ok=True)
                os.rename(os.path.join(self.data_folder_in, filename), path)
            except OSError:
                continue  # taken by another consumer meanwhile
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError as e:
                raise ChannelError(f"cannot read message file {path!r}") from e
            try:
                payload = read_message(raw)
            except MalformedMessage as why:
                report(f"queue {queue}", why, raw)
                os.makedirs(dead, exist_ok=True)
                os.replace(path, os.path.join(dead, filename))
                continue
            os.remove(path)
            return payload
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel
