"""recforge.serving.fleet.processes.group_cpu against real child processes: the CPU seconds of a node's process
group (the server and its stubs) grow while it works, stay flat while it waits, and a stopped process says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from recforge.serving.fleet.processes import group_cpu

SPIN = "import sys, time\nend = time.time() + 30\nwhile time.time() < end: pass"
WAIT = "import time\ntime.sleep(30)"


def start(code: str, root) -> subprocess.Popen:
    """A process in its own session whose command line names the fleet folder ``root`` (as a node's does)."""
    return subprocess.Popen([sys.executable, "-c", code, str(root / "node0" / "repo")], start_new_session=True)


def cpu_after(proc: subprocess.Popen, root, seconds: float) -> float:
    before, _ = group_cpu(proc.pid, root)
    time.sleep(seconds)
    after, _ = group_cpu(proc.pid, root)
    assert before is not None and after is not None
    return after - before


def test_group_cpu_grows_while_working_stays_flat_while_waiting_and_sees_a_stop(tmp_path):
    root = tmp_path / "fleet"
    (root / "node0" / "repo").mkdir(parents=True)
    spinning, waiting = start(SPIN, root), start(WAIT, root)
    try:
        time.sleep(0.3)
        assert cpu_after(spinning, root, 1.0) > 0.05  # a twentieth of a core at least (one core on an idle host)
        assert cpu_after(waiting, root, 1.0) < 0.02  # a clock tick or two
        assert group_cpu(spinning.pid, root)[1] is False
        os.kill(spinning.pid, signal.SIGSTOP)
        time.sleep(0.1)
        assert group_cpu(spinning.pid, root)[1] is True
        assert cpu_after(spinning, root, 0.3) < 0.02
        assert group_cpu(spinning.pid, tmp_path / "another-fleet") == (None, False)  # not this fleet's process
    finally:
        for proc in (spinning, waiting):
            proc.kill()
            proc.wait()
    assert group_cpu(spinning.pid, root) == (None, False)  # gone
