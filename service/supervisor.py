"""``convoy serve`` keeps its worker child alive.

A worker that dies (killed, out of memory, a crash in a native library) would otherwise
leave the API accepting jobs that nothing runs. The child is started again at once if it
had run for a while, else after a delay that doubles from 0.5 s up to
``worker_restart_max_s`` (so that a worker that cannot start does not spin), as
``convoy worker --gpus`` does for its children. While none runs, ``note`` says why, for
``/readyz``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

PARENT_ENV = "CONVOY_PARENT_PID"  # set in the child: the pid of the process that supervises it
STABLE_S = 30.0  # a child that ran this long before it died is restarted at once


class WorkerChild:
    def __init__(self, argv: list[str], max_delay_s: float = 30.0, poll_s: float = 0.5) -> None:
        self.argv, self.max_delay_s, self.poll_s = argv, max_delay_s, poll_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.note: str | None = None  # why no worker child runs now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="convoy-worker-child",
                                        daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        # the child asks to die with this process (PARENT_ENV): no preexec_fn in a
        # process with threads
        self.proc = subprocess.Popen(self.argv, env={**os.environ, PARENT_ENV: str(os.getpid())})
        self.note = None

    def _loop(self) -> None:
        quick_exits = 0
        started = time.monotonic()
        while not self._stop.wait(self.poll_s):
            assert self.proc is not None
            code = self.proc.poll()
            if code is None:
                continue
            ran = time.monotonic() - started
            quick_exits = quick_exits + 1 if ran < STABLE_S else 0
            delay = min(self.max_delay_s, 0.5 * 2 ** (quick_exits - 1)) if quick_exits else 0.0
            self.note = (f"the worker process exited with code {code} after {ran:.0f} s; "
                         f"restarting in {delay:.1f} s")
            log.warning("%s", self.note)
            if self._stop.wait(delay):
                return
            self.restarts += 1
            self._spawn()
            started = time.monotonic()

    def stop(self, sig: int, timeout_s: float = 30.0) -> None:
        """Stop supervising, pass ``sig`` to the child and wait for it (then kill it)."""
        self._stop.set()
        self._thread.join(timeout=5)
        proc: Any = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
