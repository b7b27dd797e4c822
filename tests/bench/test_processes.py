"""The launcher that the benchmarks and the test fixtures share."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.processes import Processes, cpu_seconds, family_pids, stop


def test_a_child_that_dies_ends_the_wait_with_its_log(tmp_path: Path) -> None:
    procs = Processes(tmp_path, {})
    procs.spawn("doomed", ["-c", "print('the reason'); raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="the reason"):
        procs.wait_until(lambda: False, "doomed", timeout=30, watch=True)


def test_stop_takes_the_whole_session_and_cpu_is_read_from_proc(tmp_path: Path) -> None:
    procs = Processes(tmp_path, {})
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    code = (f"import subprocess, sys, time\n{spin}"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "time.sleep(60)\n")
    leader = procs.spawn("leader", ["-c", code], new_session=True)
    procs.wait_until(lambda: len(family_pids(leader.pid)) >= 2, "the child", timeout=30)
    family = family_pids(leader.pid)
    assert cpu_seconds(leader.pid) >= 0.2
    stop(leader, timeout=5)
    time.sleep(0.2)
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in family)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
