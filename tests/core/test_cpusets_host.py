"""recforge.core.cpusets on this machine's real cgroup v1 filesystem: a process started in a group runs on its CPU set
and is a member of its cgroups, with the quota in force; skipped with the reason where cgroups cannot be written.
The affinity fallback is checked everywhere."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from recforge.core import cpusets as cs

pytestmark = pytest.mark.integration


def cgroup_unwritable_reason() -> str | None:
    probe = cs.CpuGroup(f"test-probe-{os.getpid()}", cs.CpuPlacement(cpus=(cs.host_cpus()[-1],)))
    try:
        probe.create()
    finally:
        probe.remove()
    return None if probe.mechanism == "cgroup" else probe.reason


def status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"/proc/{pid}/status has no {field}")


def start_in(group: cs.CpuGroup) -> subprocess.Popen:
    """A process that starts a child of its own: both must be in the group."""
    return subprocess.Popen([*group.launch_prefix(), "/bin/sh", "-c", "sleep 30 & exec sleep 30"],
                            start_new_session=True)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for_child(pid: int) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = children(pid)
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"process {pid} started no child")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, 9)
    process.wait(timeout=10)


def test_process_started_in_a_cgroup_runs_on_its_cpus_with_its_quota():
    reason = cgroup_unwritable_reason()
    if reason:
        pytest.skip(f"cgroup v1 not writable here: {reason}")
    cpu = cs.host_cpus()[-1]
    name = f"test-{os.getpid()}-node"
    group = cs.CpuGroup(name, cs.CpuPlacement(cpus=(cpu,), quota_cores=0.5)).create()
    try:
        assert group.mechanism == "cgroup"
        process = start_in(group)
        try:
            child = wait_for_child(process.pid)
            for pid in (process.pid, child):
                assert status_field(pid, "Cpus_allowed_list") == str(cpu)
                view = cs.process_placement(pid)
                assert view["cgroups"]["cpuset"] == f"/{cs.PARENT}/{name}"
                assert view["cgroups"]["cpu"] == f"/{cs.PARENT}/{name}"
            quota = (cs.cgroup_root() / "cpu" / cs.PARENT / name / "cpu.cfs_quota_us").read_text().strip()
            assert quota == "50000"
            assert group.usage_s() >= 0.0
        finally:
            stop(process)
    finally:
        group.remove()
    assert not group.path("cpuset").exists() and not group.path("cpu").exists()


def test_running_process_is_moved_into_a_group():
    reason = cgroup_unwritable_reason()
    if reason:
        pytest.skip(f"cgroup v1 not writable here: {reason}")
    cpu = cs.host_cpus()[0]
    group = cs.CpuGroup(f"test-{os.getpid()}-moved", cs.CpuPlacement(cpus=(cpu,))).create()
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        group.add(process.pid)
        assert status_field(process.pid, "Cpus_allowed_list") == str(cpu)
        assert cs.process_placement(process.pid)["cgroups"]["cpuset"].endswith(group.name)
    finally:
        stop(process)
        group.remove()


def test_affinity_fallback_pins_the_process_and_its_children():
    cpu = cs.host_cpus()[-1]
    group = cs.CpuGroup("unused", cs.CpuPlacement(cpus=(cpu,)), mechanism="affinity").create()
    process = start_in(group)
    try:
        child = wait_for_child(process.pid)
        assert status_field(process.pid, "Cpus_allowed_list") == str(cpu)
        assert status_field(child, "Cpus_allowed_list") == str(cpu)
        assert not group.path("cpuset").exists()  # nothing written to the cgroup filesystem
    finally:
        stop(process)
