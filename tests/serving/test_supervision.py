"""The fleet supervisor's decisions (recforge.serving.fleet.supervision) with a fake clock and fake observations, and
its control loop (Supervisor.tick) against fake node actions: no process, no server."""

from __future__ import annotations

from typing import Any

import pytest

from recforge.core.errors import ConfigError, RecForgeError
from recforge.serving.fleet.supervision import BusyWatch, Decision, RestartPolicy, SupervisorConfig
from recforge.serving.fleet.supervisor import Supervisor

CFG = SupervisorConfig(unhealthy_after=3, backoff_initial_s=1.0, backoff_factor=2.0, backoff_max_s=3.0,
                       max_restarts=3, restart_window_s=100.0)


def test_config_refuses_bad_values_naming_the_field():
    for bad in ({"interval_s": 0}, {"unhealthy_after": 0}, {"backoff_factor": 0.5}, {"max_restarts": 0},
                {"backoff_initial_s": 5.0, "backoff_max_s": 1.0}):
        with pytest.raises(ConfigError, match="SupervisorConfig"):
            SupervisorConfig(**bad)
    assert SupervisorConfig().interval_s == 1.0 and SupervisorConfig().max_restarts == 3


def test_healthy_node_is_left_alone_and_a_crash_is_taken_out_and_restarted_at_once():
    policy = RestartPolicy(CFG)
    for t in range(5):
        assert policy.observe(t, alive=True, healthy=True) == Decision()
    decision = policy.observe(10.0, alive=False, healthy=False)
    assert decision.take_out and decision.restart and not decision.alarm
    assert decision.reason.startswith("process exited; restart 1 of 3") and policy.failure == "crash"
    assert policy.restarted(12.5) == pytest.approx(2.5)  # recovery: detected at 10, back at 12.5
    assert policy.down_since is None


def test_a_hang_needs_unhealthy_after_failed_checks_in_a_row():
    policy = RestartPolicy(CFG)
    assert policy.observe(0, alive=True, healthy=False) == policy.observe(1, alive=True, healthy=False)
    assert not policy.observe(2, alive=True, healthy=True).take_out  # a pass resets the count
    assert not policy.observe(3, alive=True, healthy=False).take_out
    assert not policy.observe(4, alive=True, healthy=False).take_out
    decision = policy.observe(5, alive=True, healthy=False)
    assert decision.take_out and decision.restart and policy.failure == "hang"
    assert "3 times in a row" in decision.reason


def test_restarts_back_off_exponentially_and_a_crash_loop_raises_the_alarm_once():
    policy = RestartPolicy(CFG)
    assert policy.observe(0, alive=False, healthy=False).restart  # 1st restart: immediate
    policy.restarted(1)
    decision = policy.observe(2, alive=False, healthy=False)  # 2nd: waits backoff_initial_s
    assert decision.take_out and not decision.restart
    assert not policy.observe(2.9, alive=False, healthy=False).restart
    assert policy.observe(3.0, alive=False, healthy=False).restart
    policy.restart_failed(4.0)  # failed: the 3rd attempt waits 2 s (factor 2)
    assert not policy.observe(5.9, alive=False, healthy=False).restart
    assert policy.observe(6.0, alive=False, healthy=False).restart
    policy.restarted(7.0)
    assert policy.backoff_s(10) == 3.0  # capped at backoff_max_s
    decision = policy.observe(8, alive=False, healthy=False)  # 3 restarts in the window: give up
    assert decision.take_out and decision.alarm and not decision.restart and "crash loop" in decision.reason
    assert policy.given_up
    assert policy.observe(9, alive=False, healthy=False) == policy.observe(500, alive=True, healthy=True)
    assert not policy.observe(600, alive=False, healthy=False).alarm  # the alarm is raised once


def test_restarts_outside_the_window_do_not_count():
    policy = RestartPolicy(CFG)
    for start in (0.0, 200.0, 400.0, 600.0):  # one crash every 200 s, window 100 s: always restarted at once
        decision = policy.observe(start, alive=False, healthy=False)
        assert decision.restart and not decision.alarm
        policy.restarted(start + 1)


class FakeUnits:
    """Scripted observations per tick; records what the supervisor did."""

    def __init__(self, script: dict[str, list[tuple[bool, bool]]], fail_restarts: int = 0):
        self.script = script
        self.fail_restarts = fail_restarts
        self.calls: list[tuple[str, str]] = []
        self.records: dict[str, dict[str, Any]] = {}

    def units(self) -> list[str]:
        return list(self.script)

    def observe(self, node: str) -> tuple[bool, bool]:
        return self.script[node].pop(0) if len(self.script[node]) > 1 else self.script[node][0]

    def take_out(self, node: str) -> None:
        self.calls.append(("take_out", node))

    def record_failure(self, node: str, failure: str) -> None:
        self.calls.append((f"record_{failure}", node))

    def restart(self, node: str) -> None:
        self.calls.append(("restart", node))
        if self.fail_restarts:
            self.fail_restarts -= 1
            raise RecForgeError("tritonserver exited before it was ready")

    def record(self, node: str, **changes: Any) -> None:
        self.records.setdefault(node, {}).update(changes)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_loop_acts_only_on_the_failed_node_and_records_recovery_seconds():
    nodes = FakeUnits({"node0": [(True, True)], "node1": [(True, True), (False, False), (True, True)]})
    clock = FakeClock()
    supervisor = Supervisor(nodes, CFG, clock=clock)
    supervisor.tick()
    assert nodes.calls == []
    clock.now = 1.0
    supervisor.tick()
    assert nodes.calls == [("take_out", "node1"), ("record_crash", "node1"), ("restart", "node1")]
    supervision = nodes.records["node1"]["supervision"]
    assert supervision["status"] == "ok" and supervision["alarm"] is None
    assert supervision["restarts"][0]["failure"] == "crash" and supervision["restarts"][0]["recovery_s"] == 0.0
    assert "node0" not in nodes.records


def test_the_loop_retries_a_failed_restart_after_backoff_then_raises_the_alarm():
    nodes = FakeUnits({"node0": [(False, False)]}, fail_restarts=100)
    clock = FakeClock()
    supervisor = Supervisor(nodes, CFG, clock=clock)
    for t in range(20):
        clock.now = float(t)
        supervisor.tick()
    assert [c for c, _ in nodes.calls].count("restart") == 3 and nodes.calls[0] == ("take_out", "node0")
    assert [c for c, _ in nodes.calls].count("record_crash") == 1  # one failure, one record, however many tries
    supervision = nodes.records["node0"]["supervision"]
    assert supervision["status"] == "given_up" and supervision["alarm"].startswith("ALARM node0: 3 restarts")


def test_a_hang_is_recorded_as_a_hang_once():
    units = FakeUnits({"node0": [(True, False)]})
    clock = FakeClock()
    supervisor = Supervisor(units, CFG, clock=clock)
    for t in range(CFG.unhealthy_after + 2):
        clock.now = float(t)
        supervisor.tick()
    assert [c for c in units.calls if c[0].startswith("record")] == [("record_hang", "node0")]


# -- busy or hung: BusyWatch -----------------------------------------------------------------------------------------


def watch(**cfg) -> BusyWatch:
    return BusyWatch(SupervisorConfig(**{"busy_grace_s": 10.0, "busy_cpu_fraction": 0.05, **cfg}))


def test_a_node_using_cpu_while_failing_its_check_is_busy_not_hung():
    w = watch()
    assert not w.busy("node0", 0.0, 5.0, stopped=False, healthy=True)
    assert w.busy("node0", 1.0, 5.9, stopped=False, healthy=False)  # 0.9 CPU-s in 1 s: working
    assert w.busy("node0", 2.0, 6.8, stopped=False, healthy=False)


def test_a_node_using_no_cpu_or_stopped_is_hung():
    w = watch()
    w.busy("node0", 0.0, 5.0, stopped=False, healthy=True)
    assert not w.busy("node0", 1.0, 5.01, stopped=False, healthy=False)  # 0.01 CPU-s per s: waiting on nothing
    w.busy("node1", 0.0, 5.0, stopped=False, healthy=True)
    assert not w.busy("node1", 1.0, 9.0, stopped=True, healthy=False)  # SIGSTOP: never busy


def test_busy_counts_for_busy_grace_s_at_most_then_failed_checks_count_again():
    w = watch(busy_grace_s=3.0)
    cpu = 0.0
    w.busy("node0", 0.0, cpu, stopped=False, healthy=True)
    verdicts = []
    for t in range(1, 7):
        cpu += 1.0  # spinning at one core, never answering
        verdicts.append(w.busy("node0", float(t), cpu, stopped=False, healthy=False))
    assert verdicts == [True, True, True, False, False, False]  # busy from t=1; after 3 s the checks count
    w.busy("node0", 7.0, cpu + 1, stopped=False, healthy=True)  # answered: a new stretch may begin later
    assert w.busy("node0", 8.0, cpu + 2, stopped=False, healthy=False)


def test_without_a_previous_look_or_cpu_figures_or_with_grace_off_a_failed_check_counts():
    assert not watch().busy("node0", 1.0, 9.0, stopped=False, healthy=False)  # nothing to compare with
    w = watch()
    w.busy("node0", 0.0, 1.0, stopped=False, healthy=True)
    assert not w.busy("node0", 1.0, None, stopped=False, healthy=False)  # the process is gone
    off = watch(busy_grace_s=0.0)
    off.busy("node0", 0.0, 1.0, stopped=False, healthy=True)
    assert not off.busy("node0", 1.0, 2.0, stopped=False, healthy=False)
