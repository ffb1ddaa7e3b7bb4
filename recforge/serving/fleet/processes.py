"""The fleet's processes: which live processes belong to a fleet folder, and stopping them by process group."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.core import cpusets
from recforge.inference import triton as tr
from recforge.serving.pids import cmdline, pid_alive

# every node's tritonserver runs with these: server-side latency quantiles per model version (the canary gate)
NODE_SERVER_ARGS = ("--metrics-config=summary_latencies=true",)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_node_again(info: Mapping[str, Any], load_models: Sequence[str], timeout_s: float) -> tr.TritonServer:
    """Start a node's tritonserver again from its state.json entry: same repository, ports, log, arguments and
    CPU placement as `fleet up` gave it (the supervisor's restarts and :meth:`Fleet.restart_node`). Started, not
    yet waited for."""
    server = tr.TritonServer(info["repo"], http_port=info["http_port"], grpc_port=info["grpc_port"],
                             metrics_port=info["metrics_port"], log_path=info["log"], load_models=list(load_models),
                             startup_timeout_s=timeout_s, extra_args=list(NODE_SERVER_ARGS),
                             placement=placement_of(info))
    server.start()
    return server


def placement_of(entry: Mapping[str, Any]) -> cpusets.CpuGroup | None:
    """The CPU group a node or the balancer was placed in at `fleet up` (state.json; None: placement off), so a
    restarted process goes back into its CPU set and quota."""
    return cpusets.CpuGroup.from_state(entry["placement"]) if entry.get("placement") else None


def process_alive(pid: int | None) -> bool:
    """True while process ``pid`` runs (None: no process)."""
    return pid is not None and pid_alive(int(pid))


def belongs_to_fleet(pid: int, root: Path) -> bool:
    """True when the process's command line names a path inside this fleet's folder."""
    marker = str(root.resolve()) + "/"
    return any(marker in arg or arg == marker[:-1] for arg in cmdline(pid))


def fleet_processes(root: Path) -> list[int]:
    """Pids of our user's live processes whose command line names this fleet's folder (servers, stubs, haproxy)."""
    uid = os.getuid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        pid = int(entry.name)
        if belongs_to_fleet(pid, root) and pid_alive(pid):
            found.append(pid)
    return sorted(found)


def group_cpu(pid: int, root: Path) -> tuple[float | None, bool]:
    """(CPU seconds used so far by the process group of ``pid`` among this fleet's processes — a node's
    tritonserver and its python-backend stubs —, whether ``pid`` itself is stopped); (None, False) when gone."""
    try:
        group = os.getpgid(pid)
    except OSError:
        return None, False
    ticks, stopped, found = 0, False, False
    for member in fleet_processes(root):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            if member != pid and os.getpgid(member) != group:
                continue
        except (OSError, IndexError):
            continue
        found = True
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
        if member == pid:
            stopped = fields[0] in ("T", "t")
    return (ticks / CLOCK_TICKS if found else None), stopped


def stop_groups(pids: Sequence[int], root: Path, timeout_s: float = 20.0) -> list[int]:
    """SIGTERM the process groups of ``pids`` (servers started in their own sessions) together, SIGKILL what is
    left after ``timeout_s``. Only pids that are still this fleet's processes are touched; returns those."""
    mine = [int(p) for p in pids if p and process_alive(int(p)) and belongs_to_fleet(int(p), root)]
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        for pid in mine:
            if process_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(process_alive(p) for p in mine):
            time.sleep(0.05)
    for pid in mine:  # python backend stubs are in their server's group: none outlives it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return mine

