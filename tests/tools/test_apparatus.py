"""recforge.tools.apparatus: the accounting (requests per query, used rates, ratios) on given figures, the null
target's HAProxy config, and one small real calibration (load generator and a real HAProxy null target on separate
CPU sets)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from recforge.core import cpusets as cs
from recforge.core.config import config_from_dict
from recforge.core.errors import ConfigError
from recforge.serving.loadbalancer.haproxy_config import check_config
from recforge.tools import apparatus as ap
from recforge.tools.fault_bench import FaultBenchConfig
from recforge.tools.fleet_bench import FleetBenchConfig

PROFILE = {"model_family": "dlrm", "variant": "pruned25", "target": {"name": "cpu-triton"},
           "latency_bounded_throughput_qps": 700.0,
           "search": {"lbt_search": {"max_qps": 2000.0}, "best_knobs": {"sub_batch": 128, "workers": 4}}}


def test_requests_per_query_cuts_items_into_sub_batches():
    assert ap.requests_per_query(np.array([1, 64, 65, 167, 1024]), 64).tolist() == [1, 1, 2, 3, 16]


def test_used_rates_come_from_the_profile_and_the_benches():
    rates = ap.used_rates(PROFILE, FaultBenchConfig(rate_qps=40.0, items=16), FleetBenchConfig(nodes=2))
    assert [(r["kind"], r["rate"]) for r in rates] == [("mix", 700.0), ("mix", 1400.0), ("mix", 2000.0),
                                                       ("fixed", 40.0)]
    assert "dlrm/pruned25 on cpu-triton" in rates[0]["use"]
    assert [r["kind"] for r in ap.used_rates(None, FaultBenchConfig(), FleetBenchConfig())] == ["fixed"]


def test_rate_table_flags_rates_the_apparatus_cannot_drive_five_times_over():
    rates = ap.used_rates(PROFILE, FaultBenchConfig(), FleetBenchConfig(nodes=2))  # a 2-node served bench
    rows = ap.rate_table(rates, {"mix": 5000.0, "fixed": 3000.0}, min_ratio=5.0)
    assert [(r["ratio"], r["enough"]) for r in rows] == [(7.14, True), (3.57, False), (2.5, False), (75.0, True)]


def test_config_and_placements_are_checked():
    with pytest.raises(ConfigError, match="CPU list"):
        ap.ApparatusConfig(apparatus_cpus="x")
    with pytest.raises(ConfigError, match="ApparatusConfig.queries"):
        config_from_dict(ap.ApparatusConfig, {"queries": 1})
    with pytest.raises(ConfigError, match="share CPUs 1"):
        ap.placements(ap.ApparatusConfig(apparatus_cpus="0-1", target_cpus="1"), (0, 1))
    apparatus, target = ap.placements(ap.ApparatusConfig(), (0, 1))
    assert (apparatus.cpus, target.cpus) == ((0,), (1,))
    with pytest.raises(ConfigError, match="none is left"):
        ap.placements(ap.ApparatusConfig(), (0,))


@pytest.mark.skipif(not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()),
                    reason="haproxy is not installed (make setup)")
def test_null_target_config_is_valid_haproxy(tmp_path):
    path = ap.null_target_config(tmp_path / "null.cfg", 18123, tmp_path / "admin.sock", max_body=300_000)
    check_config(path)
    text = path.read_text()
    assert "option http-buffer-request" in text and "tune.bufsize 524288" in text


@pytest.mark.integration
@pytest.mark.skipif(len(cs.host_cpus()) < 2, reason="the calibration needs 2 CPUs: one per side")
def test_small_calibration_measures_the_client_against_a_real_null_target():
    cfg = ap.ApparatusConfig(queries=300, sub_batch=64, workers=4)
    doc = ap.calibrate(cfg)
    mix, fixed = doc["mix"], doc["fixed"]
    assert mix["queries"] == 300 and fixed["queries"] == 300
    assert mix["queries_per_s"] > 0 and mix["requests_per_s"] > mix["queries_per_s"]  # ~167 items: 3 requests
    assert fixed["requests_per_s"] == pytest.approx(fixed["queries_per_s"], rel=0.01)  # 16 rows: 1 request
    assert doc["null_target_requests"] >= 300 + 300 + ap.WARMUP_QUERIES
    assert doc["null_target_connections"] <= 32  # kept alive: not one connection per request
    assert doc["placement"]["apparatus"]["cpus"] != doc["placement"]["null_target"]["cpus"]
    assert {r["kind"] for r in doc["rates"]} >= {"fixed"}
    line = ap.render(doc).splitlines()[-1]
    assert line.startswith("apparatus: ceiling_qps=") and "enough=" in line
    # the groups are gone and this process is back on every CPU
    assert not list((cs.cgroup_root() / "cpuset" / cs.PARENT).glob("apparatus-*"))
    assert len(cs.host_cpus()) >= 2


def test_crosscheck_ratios_compare_the_load_generator_with_perf_analyzer():
    from recforge.tools.apparatus_crosscheck import CrosscheckConfig, ratios

    loadgen = {"requests_per_s": 99.0, "p50": 3.0, "p95": 6.0, "p99": float("nan")}
    perf = {"requests_per_s": 100.0, "p50": 2.0, "p95": 4.0, "p99": 5.0}
    assert ratios(loadgen, perf) == {"requests_per_s": 0.99, "p50": 1.5, "p95": 1.5}
    assert ratios({"p50": 1.0, "p95": 2.0}, {"p50": 0.0, "p95": None}) == {"p50": None}
    with pytest.raises(ConfigError, match="CrosscheckConfig.batch"):
        CrosscheckConfig(batch=0)
