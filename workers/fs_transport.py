"""kombu's filesystem transport with atomic writes, for embedded mode.

The stock transport opens the message file under its final name and then writes it, so a
consumer polling at that moment can read an empty file and fail. Here a message is written
under a temporary name and renamed into place: a consumer sees a whole message or none.
Names carry a zero-padded timestamp so that lexical order is arrival order.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{time.time_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        tmp = os.path.join(self.data_folder_out, f".tmp-{uuid.uuid4()}")
        with open(tmp, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.replace(tmp, os.path.join(self.data_folder_out, name))


class Transport(filesystem.Transport):
    Channel = Channel
