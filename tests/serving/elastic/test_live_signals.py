"""The live controller's signal parsing: Triton's Prometheus text, HAProxy's ``show stat`` rows, node health, and the
rates taken from the deltas between two ticks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recforge.serving.elastic.live_signals import (
    NodeCounters,
    SignalTracker,
    balancer_view,
    health_problem,
    node_counters,
    summary_p95_ms,
)
from recforge.serving.loadbalancer import parse_show_stat


def triton_text(success: int, queue_us: int, request_us: int, p95_us: str = "9500", model: str = "ncf") -> str:
    """Prometheus text as a Triton 2.45 node with summary_latencies=true writes it."""
    return f"""# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="{model}",version="1"}} {success}
nv_inference_request_failure{{model="{model}",version="1"}} 2
nv_inference_count{{model="{model}",version="1"}} {success * 4}
nv_inference_exec_count{{model="{model}",version="1"}} {success}
nv_inference_request_duration_us{{model="{model}",version="1"}} {request_us}
nv_inference_queue_duration_us{{model="{model}",version="1"}} {queue_us}
nv_inference_compute_infer_duration_us{{model="{model}",version="1"}} {request_us // 2}
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{{model="{model}",version="1"}} {success}
nv_inference_request_summary_us_sum{{model="{model}",version="1"}} {request_us}
nv_inference_request_summary_us{{model="{model}",version="1",quantile="0.5"}} 4000
nv_inference_request_summary_us{{model="{model}",version="1",quantile="0.95"}} {p95_us}
nv_inference_request_summary_us{{model="{model}",version="1",quantile="0.99"}} 12000
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
nv_cpu_utilization 0.5
"""


STAT_HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
               "status,weight,act,bck,check_status,req_rate,req_tot,")


def stat_text(req_tot: int, node1_status: str = "UP", node1_weight: int = 128) -> str:
    return "\n".join([
        STAT_HEADER,
        f"inference,FRONTEND,,,3,9,2000,{req_tot + 7},1,1,0,0,0,,,,,OPEN,,,,,5,{req_tot},",
        "triton,node0,0,0,1,4,,40,1,1,,0,,0,0,0,0,UP,128,1,0,L7OK,,,",
        f"triton,node1,2,3,2,4,,50,1,1,,0,,0,0,0,0,{node1_status},{node1_weight},1,0,L7TOUT,,,",
        "triton,BACKEND,2,3,3,9,200,90,1,1,0,0,,0,0,0,0,UP,256,2,0,,,90,",
        "",
    ])


def test_node_counters_sum_the_served_models_and_read_the_summary_p95():
    text = triton_text(120, 120_000, 600_000) + triton_text(10, 5_000, 50_000, p95_us="30000", model="other")
    counters = node_counters(text, {"ncf"})
    assert (counters.success, counters.failure) == (120, 2)
    assert (counters.queue_us, counters.request_us, counters.compute_infer_us) == (120_000, 600_000, 300_000)
    assert counters.p95_ms == pytest.approx(9.5)
    both = node_counters(text)
    assert both.success == 130 and both.p95_ms == pytest.approx(30.0)  # the worst model's p95


def test_a_summary_without_requests_gives_no_p95():
    assert math.isnan(summary_p95_ms(triton_text(0, 0, 0, p95_us="NaN")))
    assert math.isnan(summary_p95_ms("nv_cpu_utilization 0.5\n"))
    assert node_counters("").success == 0


def test_balancer_view_reads_the_frontend_requests_and_each_server():
    view = balancer_view(parse_show_stat(stat_text(1000, node1_status="DOWN", node1_weight=0)))
    assert view.requests_total == 1000
    assert set(view.servers) == {"node0", "node1"}
    assert view.servers["node0"].status == "UP" and view.servers["node0"].weight == 128
    node1 = view.servers["node1"]
    assert (node1.status, node1.weight, node1.sessions, node1.queued, node1.check) == ("DOWN", 0, 2, 2, "L7TOUT")


def test_health_problems_name_what_failed():
    view = balancer_view(parse_show_stat(stat_text(0, node1_status="DOWN")))
    counters = NodeCounters(success=1)
    assert health_problem(view.servers["node0"], counters) == ""
    assert "DOWN" in health_problem(view.servers["node1"], counters)
    assert "L7TOUT" in health_problem(view.servers["node1"], counters)
    assert "metrics" in health_problem(view.servers["node0"], None, "Read timed out")
    assert "Read timed out" in health_problem(view.servers["node0"], None, "Read timed out")
    assert "backend" in health_problem(None, counters)


def test_rates_come_from_the_deltas_between_ticks():
    tracker = SignalTracker(summary_window_s=0.0)  # the summary trusted at once (a young node: the next test)
    first = {"node0": node_counters(triton_text(100, 100_000, 500_000)),
             "node1": node_counters(triton_text(50, 0, 100_000, p95_us="NaN"))}
    assert tracker.update(10.0, balancer_view(parse_show_stat(stat_text(1000))), first, ["node0", "node1"]) is None
    second = {"node0": node_counters(triton_text(300, 500_000, 2_500_000)),
              "node1": node_counters(triton_text(90, 20_000, 300_000, p95_us="NaN"))}
    signals = tracker.update(12.0, balancer_view(parse_show_stat(stat_text(1500))), second, ["node0", "node1"])
    assert signals.node_names == ("node0", "node1")
    assert signals.arrival_qps == pytest.approx(250.0)  # 500 requests in 2 s
    np.testing.assert_allclose(signals.throughput_qps, [100.0, 20.0])
    np.testing.assert_allclose(signals.queue_ms, [2.0, 0.5])  # 400 ms queued over 200 requests; 20 ms over 40
    # node0 has a summary p95; node1 reports none: the tick's mean request duration stands in
    np.testing.assert_allclose(signals.p95_ms, [9.5, 5.0])
    assert signals.mix_cost_ratio == 1.0
    # a tick in which node0 served nothing: its summary's old p95 (a cold start, say) is not a latency of now
    idle = tracker.update(13.0, balancer_view(parse_show_stat(stat_text(1500))),
                          {"node0": node_counters(triton_text(300, 500_000, 2_500_000, p95_us="60000"))}, ["node0"])
    assert idle.throughput_qps.tolist() == [0.0] and idle.p95_ms.tolist() == [0.0]


def test_a_restarted_node_or_balancer_gives_no_negative_rate():
    tracker = SignalTracker()
    tracker.update(0.0, balancer_view(parse_show_stat(stat_text(1000))),
                   {"node0": node_counters(triton_text(500, 0, 0))}, ["node0"])
    signals = tracker.update(1.0, balancer_view(parse_show_stat(stat_text(10))),
                             {"node0": node_counters(triton_text(3, 0, 30_000))}, ["node0"])
    assert signals.arrival_qps == 0.0 and signals.throughput_qps.tolist() == [0.0]
    assert np.isfinite(signals.queue_ms).all() and np.isfinite(signals.p95_ms).all()


def test_a_young_node_s_summary_is_not_trusted_until_its_warm_up_has_aged_out():
    tracker = SignalTracker(summary_window_s=60.0)
    view = balancer_view(parse_show_stat(stat_text(0)))
    tracker.update(0.0, view, {"node0": node_counters(triton_text(1025, 0, 400_000_000, p95_us="391000"))},
                   ["node0"])
    # 100 requests of 5 ms each in the tick; the summary still holds the 1,024 warm-up requests
    young = tracker.update(1.0, view, {"node0": node_counters(triton_text(1125, 0, 400_500_000,
                                                                          p95_us="391000"))}, ["node0"])
    assert young.p95_ms.tolist() == [5.0]
    old = tracker.update(61.0, view, {"node0": node_counters(triton_text(1225, 0, 401_000_000, p95_us="12000"))},
                         ["node0"])
    assert old.p95_ms.tolist() == [12.0]
    # a restart (its counters began again) makes it young again
    again = tracker.update(62.0, view, {"node0": node_counters(triton_text(10, 0, 50_000, p95_us="391000"))},
                           ["node0"])
    assert again.throughput_qps.tolist() == [0.0]
    after = tracker.update(63.0, view, {"node0": node_counters(triton_text(20, 0, 100_000, p95_us="391000"))},
                           ["node0"])
    assert after.p95_ms.tolist() == [5.0]
