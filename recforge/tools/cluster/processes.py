"""Detached service processes of the cluster: start one in its own session with a pid file, tell whether it still
runs (pid and start time, so a reused pid is not mistaken for it), stop its whole process group and whatever it
started.

Every process a service starts inherits ``RECFORGE_CLUSTER_PROCESS=<its pid file>`` in its environment: that is how
``stop_group`` still finds what a service left behind after the service itself was killed (a SIGKILLed worker's
task in a session of its own, e.g. a tritonserver, is reparented to init and no longer below any service).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from recforge.serving.pids import pid_alive


def start_time(pid: int) -> str:
    """The kernel's start time of process ``pid`` (clock ticks since boot; "" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


MARKER_ENV = "RECFORGE_CLUSTER_PROCESS"  # = the pid file of the service a process descends from


def start_detached(argv: Sequence[str], env: Mapping[str, str], log: Path, pidfile: Path,
                   cwd: Path | None = None) -> int:
    """Start ``argv`` in a new session (its own process group), output appended to ``log``; returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(env) | {MARKER_ENV: str(pidfile)}, cwd=cwd, start_new_session=True)
    pidfile.write_text(f"{proc.pid} {start_time(proc.pid)}\n")
    return proc.pid


def running_pid(pidfile: Path) -> int | None:
    """The pid recorded in ``pidfile`` while that very process runs; None otherwise."""
    try:
        pid_text, started = pidfile.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and start_time(pid) == started else None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree (children first)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def marked_processes(pidfile: Path) -> list[int]:
    """The live processes whose environment says they descend from the service of ``pidfile`` (this user's, or all
    as root)."""
    marker = f"{MARKER_ENV}={pidfile}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def stop_group(pidfile: Path, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the process group of the process in ``pidfile``: ``sig``, then SIGKILL after ``timeout_s``; then the
    processes it started in sessions of their own (a task's tritonserver), and, when the service itself is gone
    (killed), whatever it left behind (found by ``marked_processes``). Returns whether the service was running.
    Removes the pid file."""
    pid = running_pid(pidfile)
    pidfile.unlink(missing_ok=True)
    if pid is None:
        kill_all({child: start_time(child) for child in marked_processes(pidfile)})
        return False
    started = {child: start_time(child) for child in [*descendants(pid), *marked_processes(pidfile)] if child != pid}
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while group_alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.2)
    if group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap(pid)
    kill_all(started)
    return True


def kill_all(started: dict[int, str]) -> None:
    """SIGKILL the processes ``{pid: start time}`` that still run (the same process: not a reused pid) and wait up
    to 10 s for them to go."""
    orphans = [child for child, when in started.items() if when and start_time(child) == when and pid_alive(child)]
    for child in orphans:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10.0
    while any(pid_alive(child) for child in orphans) and time.monotonic() < deadline:
        time.sleep(0.1)


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status when it is our child (a process started by this command)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def last_line(log: Path) -> str:
    """The last non-empty line of ``log`` (for a one-line error), "" when there is none."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""
