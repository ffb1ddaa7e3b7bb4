"""The fleet's CPU placement (FleetConfig.node_cpus, recforge.core.cpusets): the config's checks and plan without a
server; a real fleet whose node and balancer run on their planned CPU sets, shown by ``status``, and whose CPU groups
``down`` removes."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from recforge.contracts.features import example_spec
from recforge.core import cpusets as cs
from recforge.core.errors import ConfigError
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.serving import fleet as fl
from recforge.serving.fleet.lifecycle import cpu_group_prefix

SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
triton_ok, triton_why = tr.check_installation()


def test_placement_is_off_by_default_and_checked():
    assert fl.FleetConfig().cpu_plan((0, 1)) is None
    plan = fl.FleetConfig(nodes=2, node_cpus=1, cpu_quota=0.5, share_cpus=True).cpu_plan((0, 1))
    assert plan.placements["apparatus"].cpus == (0,) and plan.placements["node1"].quota_cores == 0.5
    with pytest.raises(ConfigError, match="cannot isolate.*need 4 CPUs"):
        fl.FleetConfig(nodes=2, node_cpus=1).cpu_plan((0, 1))
    assert fl.FleetConfig(nodes=2, node_cpus=1).cpu_plan(range(4)).isolated
    with pytest.raises(ConfigError, match="cpu_quota needs node_cpus"):
        fl.FleetConfig(cpu_quota=1.0)
    with pytest.raises(ConfigError, match="cpu_quota: 2 cores exceed node_cpus=1"):
        fl.FleetConfig(node_cpus=1, cpu_quota=2.0)
    with pytest.raises(ConfigError, match="FleetConfig.node_cpus"):
        fl.FleetConfig.from_dict({"node_cpus": -1})


@pytest.mark.triton
@pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")
def test_fleet_nodes_and_balancer_run_on_their_planned_cpus(tmp_path):
    home = tmp_path / "home"
    onnx_path = export_onnx(build_model("ncf", SPEC).eval(), SPEC, tmp_path / "m.onnx")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(SPEC.to_json())
    source = fl.explicit_source(onnx_path, spec_path, model="m", version=1)
    cfg = fl.FleetConfig(nodes=1, port=0, check_inter_ms=200, node_cpus=1, cpu_quota=0.5, share_cpus=True)
    plan = cfg.cpu_plan(cs.host_cpus())
    try:
        state = fl.up(source, cfg, home=home, supervisor=fl.SupervisorConfig(interval_s=0.5))
        assert state["placement"]["apparatus_cpus"] == plan.placements["apparatus"].cpu_list
        view = fl.status(home=home)
        assert view["status"] == "up" and view["cpu_plan"] == plan.describe()
        views = {"node0": view["nodes"]["node0"]["placement"], "balancer": view["balancer"]["placement"]}
        for role, entry in views.items():
            wanted = plan.placements[role]
            assert entry["planned"]["cpus"] == wanted.cpu_list
            assert entry["cpus_allowed"] == wanted.cpu_list  # where the process really runs (/proc)
            if entry["planned"]["mechanism"] == "cgroup":
                assert entry["cgroups"]["cpuset"] == f"/{cs.PARENT}/{entry['planned']['name']}"
                assert entry["cpu_seconds"] > 0
        assert view["nodes"]["node0"]["placement"]["planned"]["quota_cores"] == 0.5

        # a node the supervisor restarts goes back into its CPU set (not onto every CPU)
        os.kill(state["nodes"]["node0"]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            node = fl.read_state(home)["nodes"]["node0"]
            if (node.get("supervision") or {}).get("status") == "ok":
                break
            time.sleep(0.2)
        assert node["pid"] != state["nodes"]["node0"]["pid"], node.get("supervision")
        restarted = fl.status(home=home)["nodes"]["node0"]["placement"]
        assert restarted["cpus_allowed"] == plan.placements["node0"].cpu_list
    finally:
        fl.down(home=home)
    prefix = cpu_group_prefix(fl.fleet_dir(home))
    assert not [p for p in (cs.cgroup_root() / "cpuset" / cs.PARENT).glob(prefix + "*")]
