"""recforge.tools.fault_bench: its settings and error kinds (no server), and one ``kill9`` run end to end against a
real supervised 2-node fleet behind HAProxy with a tiny NCF model and short durations (structure and recovery,
never wall-clock bounds)."""

from __future__ import annotations

import json
import shutil
import tempfile
import typing
from pathlib import Path

import pytest
import requests

from recforge.core.errors import ConfigError
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.serving import fleet as fl
from recforge.tools import fault_bench as fb
from recforge.tools import fault_bench_figures as ff
from recforge.tools.fault_bench_fleet import FAULTS
from recforge.tools.fault_bench_traffic import error_kind
from tests.serving.test_fleet import MODEL, SPEC

triton_ok, triton_why = tr.check_installation()


def test_settings_are_checked_on_one_line():
    for bad in ({"faults": []}, {"faults": ["kill9", "kill9"]}, {"faults": ["reboot"]}, {"repeats": 0},
                {"rate_qps": 0}, {"arrivals": "bursty"}, {"nodes": 1}, {"supervisor": {"max_restarts": 0}},
                {"supervisor": {"unknown": 1}}, {"unknown": 1}):
        with pytest.raises(ConfigError):
            fb.FaultBenchConfig.from_dict(bad)
    assert set(typing.get_args(fb.FaultName)) == set(FAULTS) and fb.FaultBenchConfig().faults == tuple(FAULTS)
    cfg = fb.FaultBenchConfig.from_dict({"faults": ["sigstop", "kill9"], "supervisor": {"interval_s": 0.5}})
    assert cfg.faults == ("sigstop", "kill9") and cfg.repeats == 3
    supervisor = cfg.supervisor_config()  # the bench's crash-loop window under the given fields
    assert supervisor.interval_s == 0.5 and supervisor.restart_window_s == fb.BENCH_SUPERVISOR["restart_window_s"]


def test_failed_requests_are_sorted_into_kinds():
    refused = requests.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    reset = requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))
    closed = requests.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed connection'))")
    assert [error_kind(e) for e in (refused, reset, closed)] == \
        [ff.CONNECTION_REFUSED, ff.CONNECTION_RESET, ff.CONNECTION_RESET]
    assert error_kind(requests.ReadTimeout("read timed out")) == ff.TIMEOUT
    assert error_kind(requests.ConnectTimeout("connect timed out")) == ff.TIMEOUT
    assert error_kind(tr.TritonError("HTTP 503: no server", 503)) == ff.HTTP_5XX
    assert error_kind(tr.TritonError("HTTP 413: too large", 413)) == ff.HTTP_4XX
    assert error_kind(ValueError("odd")) == ff.OTHER


@pytest.fixture
def short_home():
    """A short RECFORGE_HOME: HAProxy's admin socket path under it must stay within 107 characters."""
    home = Path(tempfile.mkdtemp(prefix="fault-", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.triton
@pytest.mark.integration  # HAProxy in front of the nodes
@pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")
def test_a_kill9_run_reports_its_figures_and_the_fleet_recovers(tmp_path, short_home, monkeypatch, capsys):
    monkeypatch.setenv("RECFORGE_HOME", str(short_home))
    onnx_path = export_onnx(build_model("ncf", SPEC).eval(), SPEC, tmp_path / "model.onnx")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(SPEC.to_json())
    out = tmp_path / "faults.json"
    settings = {"before_s": 2, "settle_s": 2, "rate_qps": 20, "recovery_timeout_s": 120,
                "supervisor": {"interval_s": 0.5}}
    code = fb.main(["--onnx", str(onnx_path), "--spec", str(spec_path), "--model", MODEL, "--faults", "kill9",
                    "--repeats", "1", "--config", json.dumps(settings), "--out", str(out)])
    printed = capsys.readouterr()
    print(printed.out)  # the table (pytest -s)
    assert code == 0, printed.err
    doc = json.loads(out.read_text())
    assert "| kill9 | 1/1 |" in printed.out

    (run,) = doc["runs"]
    assert run["fault"] == "kill9" and run["repeat"] == 0 and run["victim"] == "node0"
    assert run["injected"]["signal"] == "SIGKILL"
    assert run["recovered"] is True and run["recovery_s"] is not None and "fleet_replaced_after" not in run
    # both nodes back: the killed one replaced by a process the supervisor started, nothing started by hand
    assert run["full_after"] is True
    assert {name: (v["alive"], v["ready"], v["haproxy"]) for name, v in run["fleet_after"]["nodes"].items()} == \
        {"node0": (True, True, "UP"), "node1": (True, True, "UP")}
    replaced = run["replaced"]["node0"]
    assert replaced["old_pid"] == run["injected"]["pid"] != replaced["new_pid"]
    assert replaced["started_by"] == "supervisor" and run["hand_started"] is False
    # the accounting: every request in a window, the losses in kinds, detection by HAProxy and the supervisor
    assert run["sent"] == sum(run["requests"].values()) > 0 and run["requests"]["after"] > 0
    assert run["lost"] == sum(run["lost_by_kind"].values()) == sum(run["lost_by_window"].values())
    assert run["lost_by_window"]["before"] == 0 and run["lost_by_window"]["after"] == 0
    assert run["detection_s"] is not None and run["supervisor_detection_s"] is not None
    assert run["p95_ms"]["before"] is not None and run["p95_ms"]["after"] is not None
    summary = doc["summary"]["kill9"]
    assert summary["repeats"] == 1 and summary["recovered"] == 1 and summary["hand_started"] is False
    assert summary["recovery_s"]["median"] == run["recovery_s"] and summary["sent"]["n"] == 1

    # the benchmark's fleet is down, and a user's fleet folder was never used
    root = fl.fleet_dir(fb.bench_root(short_home))
    assert fl.fleet_processes(root) == [] and not (root / "state.json").exists()
    assert not (short_home / "fleet").exists()
