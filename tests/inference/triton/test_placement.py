"""A real tritonserver started in a CPU group (recforge.core.cpusets): the server and its python-backend stub
processes run on the group's CPU set (and in its cgroups where cgroup v1 can be written), and it serves."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from recforge.contracts.features import example_spec
from recforge.core import cpusets as cs
from recforge.core.ports import free_ports
from recforge.inference import model_repo as mr
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import example_inputs, export_onnx

pytestmark = pytest.mark.triton
SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_pinned_server_runs_on_its_cpu_set(tmp_path):
    onnx_path = export_onnx(build_model("ncf", SPEC).eval(), SPEC, tmp_path / "ncf.onnx")
    mr.write_model_repository(tmp_path / "repo", model_name="tiny", onnx_path=onnx_path, spec=SPEC,
                              serving_config=mr.ServingConfig(max_batch_size=16))
    cpu = cs.host_cpus()[-1]
    group = cs.CpuGroup(f"test-{os.getpid()}-triton", cs.CpuPlacement(cpus=(cpu,), quota_cores=1.0))
    http, grpc, metrics = free_ports(3)
    server = tr.TritonServer(tmp_path / "repo", http_port=http, grpc_port=grpc, metrics_port=metrics,
                             log_path=tmp_path / "server.log", load_models=["tiny"], placement=group)
    try:
        with server:
            inputs = {k: v.numpy() for k, v in example_inputs(SPEC, 4, 0).items()}
            scores = next(iter(tr.infer(server.url, "tiny", inputs).values()))
            assert np.asarray(scores).shape[0] == 4
            pids = [server.process.pid, *descendants(server.process.pid)]
            assert len(pids) >= 2, "the python backend's stub process was not found"
            for pid in pids:
                view = cs.process_placement(pid)
                assert view is not None and view["cpus_allowed"] == str(cpu), (pid, view)
                if group.mechanism == "cgroup":
                    assert view["cgroups"]["cpuset"] == f"/{cs.PARENT}/{group.name}"
                    assert view["cgroups"]["cpu"] == f"/{cs.PARENT}/{group.name}"
            if group.mechanism == "cgroup":
                assert group.usage_s() > 0  # the server's CPU time is accounted to its group
            else:
                assert "not writable" in group.reason
    finally:
        server.stop()
        group.remove()
    assert not group.path("cpuset").exists()
