"""Child processes for benchmarks and integration tests: started with their output in log
files under one folder, waited for by a readiness check that gives up early when one of
them dies, stopped politely and then firmly, and their CPU time read from ``/proc``.

The benchmarks (``bench.stack``, ``bench.peers``) and the test fixtures (``tests/fixtures.py``)
start the same kind of processes; they share this launcher so that a log that explains a
failure, and a stop that never hangs, are written once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Python child processes (``python -m ...``), each writing to ``<name>-<n>.log`` in
    ``logs``, all with the environment ``env`` unless a spawn adds to it."""

    def __init__(self, logs: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        self.logs_dir = logs
        self.env = env
        self.cwd = cwd
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              new_session: bool = False) -> subprocess.Popen[bytes]:
        """Start ``python *args``; ``new_session`` puts it and its children in a session of
        their own (so that ``session_pids`` finds the children)."""
        log = self.logs_dir / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, *args], cwd=self.cwd,
                                    env={**self.env, **(env or {})}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=new_session)
        self.procs.append(proc)
        return proc

    def wait_until(self, ok: Callable[[], bool], what: str, timeout: float = 60.0,
                   watch: bool = False,
                   errors: tuple[type[BaseException], ...] = (OSError,)) -> None:
        """Poll ``ok`` until it is true; raise with the logs when ``timeout`` passes or,
        with ``watch``, as soon as a child has exited (it will not come up then).
        ``errors`` raised by ``ok`` count as not yet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if watch and any(proc.poll() is not None for proc in self.procs):
                raise RuntimeError(f"{what}: a child exited early; logs:\n{self.tail()}")
            try:
                if ok():
                    return
            except errors:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{what} did not come up; logs:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in self.logs if p.exists())

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        """Stop every child, the last started first."""
        for proc in reversed(self.procs):
            stop(proc, sig)
        self.procs.clear()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Send ``sig`` (to the child's whole session if it leads one), wait ``timeout``
    seconds, then kill; processes it started that outlive it are killed too."""
    family = family_pids(proc.pid)
    if proc.poll() is None:
        _signal(proc, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
    for pid in family:
        if pid != proc.pid and _stat(pid) is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        if session_pids(proc.pid):
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except OSError:
        pass


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds (from /proc; 0 where there is none)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid``: a child spawned with ``new_session`` and
    the processes it started (unless they made sessions of their own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[3]) == sid:
                pids.append(int(entry.name))
    return pids


def family_pids(pid: int) -> set[int]:
    """``pid``, the processes of its session if it leads one, and all their descendants."""
    parents: dict[int, int] = {}
    family = {pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
                if int(fields[3]) == pid:
                    family.add(int(entry.name))
    grew = True
    while grew:
        more = {child for child, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return family


def cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""
