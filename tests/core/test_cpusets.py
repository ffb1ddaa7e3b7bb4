"""recforge.core.cpusets without touching the host: CPU lists, placements, the planner, and the cgroup v1 files a
group writes (against a temporary folder laid out as /sys/fs/cgroup: a fake only for the kernel interface)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from recforge.core import cpusets as cs
from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError


@pytest.mark.parametrize(("text", "cpus"), [("0", (0,)), ("0-2,5", (0, 1, 2, 5)), ("3,1", (1, 3)),
                                            ("0-1,1-2", (0, 1, 2)), (" 7 ", (7,))])
def test_cpu_lists_round_trip(text, cpus):
    assert cs.parse_cpu_list(text) == cpus
    assert cs.parse_cpu_list(cs.format_cpu_list(cpus)) == cpus


def test_format_cpu_list_compresses_runs():
    assert cs.format_cpu_list((5, 0, 1, 2, 7, 8)) == "0-2,5,7-8"


@pytest.mark.parametrize("bad", ["", "a", "2-1", "1-", "0,,1", "-1", "99999"])
def test_bad_cpu_lists_are_refused(bad):
    with pytest.raises(ConfigError, match="CPU list"):
        cs.parse_cpu_list(bad)


def test_placement_checks_its_fields():
    assert cs.CpuPlacement(cpus=(0, 1), quota_cores=1.5).quota_us == 150_000
    assert cs.CpuPlacement(cpus=(2,)).quota_us is None
    with pytest.raises(ConfigError, match="cpus.*empty"):
        cs.CpuPlacement(cpus=())
    with pytest.raises(ConfigError, match="distinct"):
        cs.CpuPlacement(cpus=(1, 1))
    with pytest.raises(ConfigError, match=r"quota_cores.*exceed the 1 CPU"):
        cs.CpuPlacement(cpus=(0,), quota_cores=1.5)
    with pytest.raises(ConfigError, match="CpuPlacement.quota_cores"):
        cs.CpuPlacement(cpus=(0,), quota_cores=0)
    with pytest.raises(ConfigError, match="CpuPlacement.period_us"):
        cs.CpuPlacement(cpus=(0,), period_us=10)
    assert config_from_dict(cs.CpuPlacement, {"cpus": [0, 1]}).cpus == (0, 1)


# -- the planner ------------------------------------------------------------------------------------------------


def test_plan_gives_disjoint_sets_when_they_fit():
    plan = cs.plan_cpus(range(8), cs.CpuPlanConfig(nodes=2, node_cpus=2, node_quota_cores=1.5))
    assert plan.isolated
    assert {role: p.cpus for role, p in plan.placements.items()} == {
        "apparatus": (0,), "balancer": (1,), "node0": (2, 3), "node1": (4, 5)}
    assert plan.placements["node1"].quota_cores == 1.5
    assert plan.placements["balancer"].quota_cores is None
    used = [cpu for p in plan.placements.values() for cpu in p.cpus]
    assert len(used) == len(set(used))


def test_plan_follows_the_host_cpus_it_is_given():
    plan = cs.plan_cpus((6, 2, 4), cs.CpuPlanConfig(nodes=1, balancer_cpus=0))
    assert {role: p.cpus for role, p in plan.placements.items()} == {"apparatus": (2,), "node0": (4,)}


def test_plan_refuses_what_cannot_be_isolated_and_says_what_would_share():
    with pytest.raises(ConfigError) as caught:
        cs.plan_cpus((0, 1), cs.CpuPlanConfig(nodes=2))
    message = str(caught.value)
    assert "\n" not in message
    assert "need 4 CPUs" in message and "has 2 (0-1)" in message
    assert "CPU 1: balancer, node0, node1" in message


def test_shared_plan_keeps_the_apparatus_alone():
    plan = cs.plan_cpus((0, 1), cs.CpuPlanConfig(nodes=2, share=True, node_quota_cores=0.5))
    assert plan.placements["apparatus"].cpus == (0,)
    assert all(plan.placements[r].cpus == (1,) for r in ("balancer", "node0", "node1"))
    assert not plan.isolated
    assert plan.shared == ("CPU 1: balancer, node0, node1 (no quota: balancer)",)


def test_shared_plan_spreads_nodes_and_flags_oversubscribed_quotas():
    plan = cs.plan_cpus(range(3), cs.CpuPlanConfig(nodes=3, balancer_cpus=0, share=True, node_quota_cores=0.75))
    assert [plan.placements[f"node{i}"].cpus for i in range(3)] == [(1,), (2,), (1,)]
    assert plan.shared == ("CPU 1: node0, node2 (quotas add up to 1.5 of 1 core: not guaranteed)",)


def test_the_balancer_can_share_the_apparatus_cpus_instead_of_the_nodes():
    """On 2 CPUs with quota'd nodes: the apparatus and the balancer on CPU 0, the nodes alone on CPU 1, and the plan
    says so; with enough CPUs the nodes still get their own."""
    plan = cs.plan_cpus((0, 1), cs.CpuPlanConfig(nodes=4, share=True, node_quota_cores=0.2,
                                                 balancer_with_apparatus=True))
    assert plan.placements["apparatus"].cpus == plan.placements["balancer"].cpus == (0,)
    assert plan.placements["balancer"].quota_cores is None
    assert all(plan.placements[f"node{i}"].cpus == (1,) for i in range(4))
    assert plan.shared == ("CPU 0: apparatus, balancer (balancer_with_apparatus)",
                           "CPU 1: node0, node1, node2, node3 (quotas add up to 0.8 of 1 core)")
    roomy = cs.plan_cpus(range(4), cs.CpuPlanConfig(nodes=3, balancer_with_apparatus=True))
    assert [roomy.placements[f"node{i}"].cpus for i in range(3)] == [(1,), (2,), (3,)]
    with pytest.raises(ConfigError, match="balancer_with_apparatus needs"):
        cs.CpuPlanConfig(nodes=1, apparatus_cpus=0, balancer_with_apparatus=True)


@pytest.mark.parametrize(("cfg", "pattern"), [
    ({"nodes": 1, "apparatus_cpus": 2, "share": True}, "none is left"),
    ({"nodes": 1, "node_cpus": 2, "share": True}, "node0 asks for 2 CPUs, only 1"),
])
def test_impossible_shared_plans_are_refused(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        cs.plan_cpus((0, 1), cs.CpuPlanConfig(**cfg))


def test_plan_config_checks_its_fields():
    with pytest.raises(ConfigError, match="CpuPlanConfig.nodes"):
        cs.CpuPlanConfig(nodes=-1)
    with pytest.raises(ConfigError, match="node_quota_cores.*exceed"):
        cs.CpuPlanConfig(nodes=1, node_cpus=1, node_quota_cores=2.0)


# -- the cgroup files, against a fake cgroup root -----------------------------------------------------------------


def make_fake_cgroup_root(root: Path, cpus: str = "0-3") -> Path:
    """/sys/fs/cgroup as cgroup v1 lays it out at ``root``, for the three controllers a group uses, on ``cpus``."""
    for controller in cs.CONTROLLERS:
        (root / controller).mkdir(parents=True)
        (root / controller / "cgroup.procs").write_text("")
    (root / "cpuset" / "cpuset.cpus").write_text(cpus + "\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    return root


@pytest.fixture
def fake_root(tmp_path) -> Path:
    return make_fake_cgroup_root(tmp_path / "cgroup")


def test_group_writes_its_cpuset_and_quota(fake_root):
    group = cs.CpuGroup("node0", cs.CpuPlacement(cpus=(1, 2), quota_cores=1.5), root=fake_root).create()
    assert group.mechanism == "cgroup"
    parent = fake_root / "cpuset" / "recforge"
    assert (parent / "cpuset.cpus").read_text() == "0-3" and (parent / "cpuset.mems").read_text() == "0"
    assert (parent / "node0" / "cpuset.cpus").read_text() == "1-2"
    assert (parent / "node0" / "cpuset.mems").read_text() == "0"
    assert (fake_root / "cpu" / "recforge" / "node0" / "cpu.cfs_period_us").read_text() == "100000"
    assert (fake_root / "cpu" / "recforge" / "node0" / "cpu.cfs_quota_us").read_text() == "150000"
    assert (fake_root / "cpuacct" / "recforge" / "node0").is_dir()


def test_group_without_quota_clears_it(fake_root):
    cs.CpuGroup("n", cs.CpuPlacement(cpus=(0,), quota_cores=1.0), root=fake_root).create()
    cs.CpuGroup("n", cs.CpuPlacement(cpus=(0,)), root=fake_root).create()  # idempotent, rewrites
    assert (fake_root / "cpu" / "recforge" / "n" / "cpu.cfs_quota_us").read_text() == "-1"


def test_a_groups_quota_changes_in_place(fake_root):
    group = cs.CpuGroup("n", cs.CpuPlacement(cpus=(1,), quota_cores=0.2, period_us=10_000), root=fake_root).create()
    quota = fake_root / "cpu" / "recforge" / "n" / "cpu.cfs_quota_us"
    assert quota.read_text() == "2000"
    group.set_quota(0.1)
    assert quota.read_text() == "1000" and group.placement.quota_cores == 0.1
    assert (fake_root / "cpu" / "recforge" / "n" / "cpu.cfs_period_us").read_text() == "10000"  # unchanged
    group.set_quota(None)
    assert quota.read_text() == "-1" and group.placement.quota_cores is None
    with pytest.raises(ConfigError, match="exceed the 1 CPU"):
        group.set_quota(2.0)
    assert quota.read_text() == "-1"  # a refused quota is not written
    affinity = cs.CpuGroup("a", cs.CpuPlacement(cpus=(0,), quota_cores=0.5), root=fake_root / "none").create()
    with pytest.raises(ConfigError, match="no cgroup"):
        affinity.set_quota(0.25)


def test_group_add_usage_and_launch_prefix(fake_root):
    group = cs.CpuGroup("lg", cs.CpuPlacement(cpus=(0,)), root=fake_root).create()
    group.add(4242)
    for controller in cs.CONTROLLERS:
        assert (fake_root / controller / "recforge" / "lg" / "cgroup.procs").read_text() == "4242"
    (fake_root / "cpuacct" / "recforge" / "lg" / "cpuacct.usage").write_text("2500000000\n")
    assert group.usage_s() == 2.5
    prefix = group.launch_prefix()
    assert prefix[:2] == ["/bin/sh", "-c"] and 'exec "$@"' in prefix[2]
    assert all(str(fake_root / c / "recforge" / "lg" / "cgroup.procs") in prefix[2] for c in cs.CONTROLLERS)


def test_cpus_outside_the_host_are_refused(fake_root):
    with pytest.raises(ConfigError, match="CPUs 4 are not on this host"):
        cs.CpuGroup("x", cs.CpuPlacement(cpus=(3, 4)), root=fake_root).create()


def test_group_falls_back_to_affinity_without_cgroups(tmp_path):
    group = cs.CpuGroup("x", cs.CpuPlacement(cpus=(0,), quota_cores=0.5), root=tmp_path / "none").create()
    assert group.mechanism == "affinity"
    assert "not writable" in group.reason and "quota not enforced" in group.reason
    assert group.launch_prefix()[1:] == ["-c", "0"]
    assert group.usage_s() is None
    assert group.to_state()["reason"] == group.reason


def test_cgroup_mechanism_asked_for_is_not_silently_replaced(tmp_path):
    with pytest.raises(ConfigError, match="cannot be created"):
        cs.CpuGroup("x", cs.CpuPlacement(cpus=(0,)), root=tmp_path / "none", mechanism="cgroup").create()


def test_group_names_and_state_round_trip(fake_root):
    with pytest.raises(ConfigError, match="CPU group name"):
        cs.CpuGroup("../etc", cs.CpuPlacement(cpus=(0,)))
    group = cs.CpuGroup("fleet-ab-node1", cs.CpuPlacement(cpus=(2, 3), quota_cores=1.0), root=fake_root).create()
    back = cs.CpuGroup.from_state(group.to_state(), root=fake_root)
    assert back.placement == group.placement and back.mechanism == "cgroup" and back.name == group.name


def test_remove_groups_by_prefix_moves_processes_to_the_root(fake_root):
    for name in ("fleet-a-node0", "fleet-a-balancer", "fleet-b-node0"):
        cs.CpuGroup(name, cs.CpuPlacement(cpus=(0,)), root=fake_root).create().add(777)
    removed = cs.remove_groups("fleet-a-", fake_root)
    assert removed == ["fleet-a-balancer", "fleet-a-node0"]
    assert (fake_root / "cpuset" / "cgroup.procs").read_text() == "777"  # moved back to the root group
    # a fake folder keeps its files, so rmdir fails here as it never does on cgroupfs; the other fleet is untouched
    assert (fake_root / "cpuset" / "recforge" / "fleet-b-node0" / "cgroup.procs").read_text() == "777"


def test_process_placement_reads_proc():
    view = cs.process_placement(os.getpid())
    assert cs.parse_cpu_list(view["cpus_allowed"]) == tuple(sorted(os.sched_getaffinity(0)))
    assert set(view["cgroups"]) <= set(cs.CONTROLLERS)
    assert cs.process_placement(None) is None
    assert re.fullmatch(r"[0-9,-]+", view["cpus_allowed"])


def test_restore_cgroups_writes_the_pid_back_where_it_was(fake_root):
    (fake_root / "cpu" / "mine").mkdir()
    cs.restore_cgroups(31, {"cpuset": "/", "cpu": "/mine", "memory": "/elsewhere"}, fake_root)
    assert (fake_root / "cpuset" / "cgroup.procs").read_text() == "31"
    assert (fake_root / "cpu" / "mine" / "cgroup.procs").read_text() == "31"
    assert not (fake_root / "memory").exists()  # only the controllers a group moves


def test_this_process_in_moves_every_thread_and_puts_them_back(tmp_path):
    before = os.sched_getaffinity(0)
    first = min(before)
    group = cs.CpuGroup("apparatus", cs.CpuPlacement(cpus=(first,)), root=tmp_path / "none", mechanism="affinity")
    with cs.this_process_in(group) as inside:
        assert inside.mechanism == "affinity"
        assert os.sched_getaffinity(0) == {first}
        seen = []
        worker = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))  # a thread started inside
        worker.start()
        worker.join()
        assert seen == [{first}]
    assert os.sched_getaffinity(0) == before


def test_this_process_in_restores_even_when_the_block_fails(tmp_path):
    before = os.sched_getaffinity(0)
    group = cs.CpuGroup("apparatus", cs.CpuPlacement(cpus=(min(before),)), root=tmp_path / "none")
    with pytest.raises(RuntimeError, match="boom"), cs.this_process_in(group):
        raise RuntimeError("boom")
    assert os.sched_getaffinity(0) == before


def test_measurement_groups_put_the_client_and_the_node_on_disjoint_cpus():
    client, node = cs.measurement_groups("check-1", host=(0, 1, 2, 3))
    assert (client.name, node.name) == ("check-1-client", "check-1-node")
    assert client.placement.cpus == (0,) and node.placement.cpus == (1,)
    assert client.mechanism == node.mechanism == "auto"  # not created yet
    with pytest.raises(ConfigError, match="none is left for the balancer and nodes"):
        cs.measurement_groups("check-2", host=(0,))
