"""recforge.tools.fault_bench_figures: the figures of a fault run from synthetic request records and fleet
observations (no clock, no server), the supervisor log's detection, the median and min-max over repeats, the table."""

from __future__ import annotations

import pytest

from recforge.tools import fault_bench_figures as ff
from recforge.tools.fault_bench_figures import FaultTimes, FleetObservation, RequestRecord

FAULT_AT = 1000.0


def steady(start: float, end: float, qps: float, latency_s: float = 0.01, node: str = "node0") -> list[RequestRecord]:
    """Answered requests every 1/qps s from ``start`` (exclusive of ``end``), each taking ``latency_s``."""
    out, t = [], start
    while t < end - 1e-9:
        out.append(RequestRecord(t, t + latency_s, 200, None, node))
        t = round(t + 1 / qps, 6)
    return out


def looks(start: float, end: float, *, full, victim=None, balancer=True, step: float = 0.1) -> list[FleetObservation]:
    out, t = [], start
    while t < end - 1e-9:
        out.append(FleetObservation(t, full, balancer, victim))
        t = round(t + step, 6)
    return out


def killed_node_run():
    """10 qps from -5 s to +15 s around the fault; the requests sent in the first second after it are reset; the
    victim leaves rotation 0.4 s after the fault and the fleet is full again 3 s after it."""
    records = steady(FAULT_AT - 5, FAULT_AT, 10, latency_s=0.010)
    records += [RequestRecord(t.sent_at, t.sent_at + 0.002, None, ff.CONNECTION_RESET)
                for t in steady(FAULT_AT, FAULT_AT + 1, 10)]
    records += steady(FAULT_AT + 1, FAULT_AT + 3, 10, latency_s=0.050)
    records += steady(FAULT_AT + 3, FAULT_AT + 15, 10, latency_s=0.020, node="node1")
    observations = (looks(FAULT_AT - 5, FAULT_AT + 0.4, full=True, victim=True)
                    + looks(FAULT_AT + 0.4, FAULT_AT + 3, full=False, victim=False)
                    + looks(FAULT_AT + 3, FAULT_AT + 15, full=True, victim=True))
    return records, observations


def test_a_killed_node_gives_its_losses_detection_recovery_and_p95_per_window():
    records, observations = killed_node_run()
    times = FaultTimes(FAULT_AT, FAULT_AT, FAULT_AT + 15, supervisor_detected_at=FAULT_AT + 0.7)
    figures = ff.fault_figures(records, observations, times, watch=ff.WATCH_NODE, settle_s=3)
    assert figures["sent"] == 200 and figures["lost"] == 10
    assert figures["lost_by_kind"] == {**{k: 0 for k in ff.ERROR_KINDS}, ff.CONNECTION_RESET: 10}
    assert figures["lost_rate"] == pytest.approx(0.05)
    assert figures["detection_s"] == pytest.approx(0.4)
    assert figures["supervisor_detection_s"] == pytest.approx(0.7)
    assert figures["recovery_s"] == pytest.approx(3.0) and figures["recovered"] is True
    assert figures["requests"] == {"before": 50, "during": 30, "after": 120}
    assert figures["lost_by_window"] == {"before": 0, "during": 10, "after": 0}
    assert figures["p95_ms"] == {"before": pytest.approx(10), "during": pytest.approx(50), "after": pytest.approx(20)}
    assert figures["served_by"] == {"node0": 70, "node1": 120}
    assert figures["fault_duration_s"] == 0 and figures["observed_s"] == pytest.approx(15)


def test_a_fleet_not_full_at_the_end_has_not_recovered():
    records, observations = killed_node_run()
    observations += looks(FAULT_AT + 15, FAULT_AT + 16, full=False, victim=False)  # it fell again at the end
    figures = ff.fault_figures(records, observations, FaultTimes(FAULT_AT, FAULT_AT, FAULT_AT + 16),
                               watch=ff.WATCH_NODE, settle_s=3)
    assert figures["recovered"] is False and figures["recovery_s"] is None
    assert figures["requests"]["after"] == 0 and figures["p95_ms"]["after"] is None


def test_recovery_waits_for_the_last_loss_the_fault_end_and_the_settle_time():
    records, observations = killed_node_run()
    late = RequestRecord(FAULT_AT + 6, FAULT_AT + 11, None, ff.TIMEOUT)  # sent after the fleet was full again
    times = FaultTimes(FAULT_AT, FAULT_AT, FAULT_AT + 15)
    figures = ff.fault_figures([*records, late], observations, times, watch=ff.WATCH_NODE, settle_s=3)
    assert figures["recovery_s"] == pytest.approx(6.0) and figures["lost_by_kind"][ff.TIMEOUT] == 1
    # a fault that lasts (a queue burst of 8 s): not recovered before it ended
    burst = FaultTimes(FAULT_AT, FAULT_AT + 8, FAULT_AT + 15)
    assert ff.fault_figures(records, observations, burst, watch=ff.WATCH_NODE, settle_s=3)["recovery_s"] == \
        pytest.approx(8.0)
    # the load stopped less than settle_s after the instant: not (yet) recovered
    short = ff.fault_figures(records, observations, FaultTimes(FAULT_AT, FAULT_AT, FAULT_AT + 4),
                             watch=ff.WATCH_NODE, settle_s=3)
    assert short["recovered"] is False and short["recovery_s"] is None


def test_a_request_in_flight_at_the_fault_is_counted_during_it():
    records = [RequestRecord(FAULT_AT - 0.5, FAULT_AT + 0.2, None, ff.CONNECTION_RESET),
               RequestRecord(FAULT_AT - 0.5, FAULT_AT - 0.4, 200, None)]
    observations = looks(FAULT_AT, FAULT_AT + 5, full=True)
    figures = ff.fault_figures(records, observations, FaultTimes(FAULT_AT, FAULT_AT, FAULT_AT + 5), watch=None,
                               settle_s=1)
    assert figures["lost_by_window"] == {"before": 0, "during": 1, "after": 0}
    assert figures["requests"]["before"] == 1 and figures["detection_s"] is None


def test_detection_watches_the_victims_rotation_or_the_balancers_process():
    observations = [FleetObservation(FAULT_AT - 1, True, True, True),
                    FleetObservation(FAULT_AT + 0.2, False, True, True),
                    FleetObservation(FAULT_AT + 0.5, False, False, None),
                    FleetObservation(FAULT_AT + 0.9, False, True, False)]
    assert ff.detection_at(observations, FAULT_AT, ff.WATCH_BALANCER) == FAULT_AT + 0.5
    assert ff.detection_at(observations, FAULT_AT, ff.WATCH_NODE) == FAULT_AT + 0.9  # None (no HAProxy) is not out
    assert ff.detection_at(observations, FAULT_AT, None) is None
    assert ff.detection_at(observations[:2], FAULT_AT, ff.WATCH_NODE) is None


def test_full_since_is_the_start_of_the_last_full_run():
    observations = [FleetObservation(t, full, True) for t, full in
                    ((1, True), (2, False), (3, True), (4, False), (5, True), (6, True))]
    assert ff.full_since(observations, 0) == 5
    assert ff.full_since(observations, 5.5) == 6
    assert ff.full_since(observations[:-2], 0) is None and ff.full_since([], 0) is None


def test_p95_is_the_nearest_rank_and_status_kinds():
    assert ff.p95(list(range(1, 101))) == 95 and ff.p95([7.0]) == 7.0 and ff.p95([]) is None
    assert ff.p95([float(x) for x in range(20, 0, -1)]) == 19
    assert [ff.kind_of_status(s) for s in (200, 503, 504, 400, 413, 302)] == \
        [None, ff.HTTP_5XX, ff.HTTP_5XX, ff.HTTP_4XX, ff.HTTP_4XX, ff.OTHER]


LOG = """\
2026-11-26 02:15:05,830 INFO supervising /tmp/x/fleet every 1 s (pid 4189): SupervisorConfig(...)
2026-11-26 02:15:07,880 WARNING node1 failed (process exited; restart 1 of 3 in the window (crash)): out of rotation
2026-11-26 02:15:26,847 WARNING node10 failed (process exited; restart 1 of 3 in the window (crash)): out of rotation
2026-11-26 02:15:27,100 WARNING node1: crash with 0 request(s) on it: none
2026-11-26 02:15:27,500 WARNING node1 failed (health check failed 3 times in a row): out of rotation
2026-11-26 02:16:07,524 WARNING balancer failed (process exited; restart 1 of 3 in the window (crash)): out of rotation
"""


def test_the_supervisors_detection_is_read_from_its_log():
    # 2026-11-26 02:15:20 UTC; the log's local time is UTC here (tz_offset_s=0)
    fault_at = 1795659320.0
    assert ff.supervisor_detection(LOG, fault_at, "node1", tz_offset_s=0) == pytest.approx(fault_at + 7.5)
    assert ff.supervisor_detection(LOG, fault_at, "node10", tz_offset_s=0) == pytest.approx(fault_at + 6.847)
    assert ff.supervisor_detection(LOG, fault_at, "haproxy", tz_offset_s=0) == pytest.approx(fault_at + 47.524)
    assert ff.supervisor_detection(LOG, fault_at + 60, "node1", tz_offset_s=0) is None
    assert ff.supervisor_detection(LOG, fault_at, "node2", tz_offset_s=0) is None
    # an hour east of UTC: the same lines are an hour earlier in epoch seconds
    assert ff.supervisor_detection(LOG, fault_at - 3600, "node1", tz_offset_s=3600) == \
        pytest.approx(fault_at - 3600 + 7.5)


def run(recovery, lost, p95_during, recovered=True, hand_started=False):
    return {"sent": 100, "lost": lost, "lost_by_kind": {**{k: 0 for k in ff.ERROR_KINDS}, ff.CONNECTION_RESET: lost},
            "detection_s": 0.5, "supervisor_detection_s": None, "recovery_s": recovery, "recovered": recovered,
            "p95_ms": {"before": 5.0, "during": p95_during, "after": 6.0}, "hand_started": hand_started}


def test_repeats_give_the_median_and_min_max_of_each_figure_and_the_table():
    summary = ff.summarize([run(3.0, 4, 40.0), run(1.0, 0, None), run(None, 9, 90.0, recovered=False)])
    assert summary["repeats"] == 3 and summary["recovered"] == 2 and summary["hand_started"] is False
    assert summary["recovery_s"] == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    assert summary["lost"] == {"median": 4, "min": 0, "max": 9, "n": 3}
    assert summary["lost_by_kind"][ff.CONNECTION_RESET]["median"] == 4
    assert summary["lost_by_kind"][ff.TIMEOUT] == {"median": 0, "min": 0, "max": 0, "n": 3}
    assert summary["p95_ms"]["during"] == {"median": 65.0, "min": 40.0, "max": 90.0, "n": 2}
    assert summary["supervisor_detection_s"] == {"median": None, "min": None, "max": None, "n": 0}
    assert ff.format_interval(summary["recovery_s"], 2) == "2.00 (1.00–3.00)"
    assert ff.format_interval(summary["detection_s"], 2) == "0.50"
    assert ff.format_interval(summary["supervisor_detection_s"]) == "–"
    table = ff.render_table({"kill9": summary, "haproxy": ff.summarize([run(None, 30, None, False, True)])})
    rows = table.splitlines()
    assert rows[2].startswith("| kill9 | 2/3 | 100 | 4 (0–9) | connection_reset 4 (0–9) | 0.50 | – | "
                              "2.00 (1.00–3.00) |")
    assert rows[3].startswith("| haproxy | 0/1 |") and rows[3].endswith("| yes |") and "| – | – |" in rows[3]
