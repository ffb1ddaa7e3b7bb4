"""CPU steal of a run, read from /proc/stat: time the hypervisor gave other guests while ours wanted the CPU."""

from __future__ import annotations

import math


def cpu_times() -> tuple[int, int] | None:
    """(total, steal) jiffies of all CPUs from /proc/stat; None where there is none (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(values), values[7]


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Share (%) of the CPU time between two :func:`cpu_times` samples that the hypervisor gave to other guests
    while this machine's vCPUs wanted to run; NaN when unknown."""
    if before is None or after is None or after[0] <= before[0]:
        return math.nan
    return 100.0 * (after[1] - before[1]) / (after[0] - before[0])

