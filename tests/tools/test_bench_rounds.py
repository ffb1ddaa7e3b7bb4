"""`make bench`'s trustworthy figures (issue 12 item 4): the order-statistic interval of the median, the interleaved
round order, the rounds' logic on injected fake measurements, the apparatus share from the load generator's
timestamps, the machine-readable bench lines and the run-to-run comparator. No load is generated."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest

from recforge.core.errors import ConfigError, DataError
from recforge.core.intervals import median_interval, order_statistic_coverage
from recforge.tools.bench import compare
from recforge.tools.bench.apparatus_share import apparatus_share_figures, apparatus_shares
from recforge.tools.bench.bench_line import format_bench_line, parse_bench_line, parse_bench_lines
from recforge.tools.bench.config import BenchConfig
from recforge.tools.bench.rounds import (
    BASELINE,
    RECFORGE,
    RESTART_FRACTION,
    RoundSide,
    best_option,
    interleaved_order,
    round_start_qps,
    run_rounds,
    summarize_rounds,
)

# ------------------------------------------------------------------------------------------------------- intervals


def test_coverage_of_order_statistics_matches_the_binomial():
    assert order_statistic_coverage(5, 1) == pytest.approx(1 - 2 / 32)  # [min, max] of 5
    assert order_statistic_coverage(6, 1) == pytest.approx(1 - 2 / 64)
    assert order_statistic_coverage(9, 2) == pytest.approx(1 - 2 * (1 + 9) / 512)


@pytest.mark.parametrize(("values", "median", "low", "high", "coverage"), [
    ([3.0, 1.0, 2.0, 5.0, 4.0], 3.0, 1.0, 5.0, 0.9375),  # 5 rounds: only [min, max], below 95%
    ([6, 1, 5, 2, 4, 3], 3.5, 1.0, 6.0, 0.96875),
    (list(range(1, 10)), 5.0, 2.0, 8.0, 1 - 20 / 512),  # 9 rounds: the 2nd smallest and 2nd largest
    ([2.0, None, math.nan, 4.0, 3.0], 3.0, 2.0, 4.0, 0.75),  # missing rounds are left out
])
def test_median_interval_on_known_values(values, median, low, high, coverage):
    interval = median_interval(values)
    assert (interval.median, interval.low, interval.high) == (median, low, high)
    assert interval.coverage == pytest.approx(coverage)
    assert interval.low <= interval.median <= interval.high


def test_median_interval_narrows_with_more_rounds_and_handles_none():
    rng = np.random.default_rng(0)
    xs = rng.normal(1.0, 0.1, 60)
    few, many = median_interval(xs[:6]), median_interval(xs)
    assert many.coverage >= 0.95 and many.high - many.low < few.high - few.low
    empty = median_interval([None, math.nan])
    assert empty.n == 0 and math.isnan(empty.median) and empty.text() == "—"
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]).text(".2g") == "3 [1, 5]"
    with pytest.raises(ValueError, match="confidence"):
        median_interval([1.0], confidence=1.0)


# ---------------------------------------------------------------------------------------------------------- rounds


def test_interleaved_order_is_abab():
    assert interleaved_order(3) == [(0, BASELINE), (0, RECFORGE), (1, BASELINE), (1, RECFORGE), (2, BASELINE),
                                    (2, RECFORGE)]
    assert interleaved_order(1, ("a", "b", "c")) == [(0, "a"), (0, "b"), (0, "c")]
    with pytest.raises(ValueError, match="rounds"):
        interleaved_order(0)
    with pytest.raises(ValueError, match="distinct"):
        interleaved_order(2, ("a", "a"))


class FakeSide:
    """A side with scripted LBTs per round and a p95 that grows with the offered rate; logs every call."""

    def __init__(self, label: str, lbts: list[float], ms_per_qps: float, log: list):
        self.label, self.lbts, self.ms_per_qps, self.log = label, list(lbts), ms_per_qps, log
        self.starts: list[float] = []

    def side(self, first_start: float) -> RoundSide:
        def search(start: float) -> float:
            self.starts.append(start)
            self.log.append((self.label, "lbt"))
            return self.lbts.pop(0)

        def load(rate: float) -> dict:
            self.log.append((self.label, "load", rate))
            return {"p95_ms": 1.0 + self.ms_per_qps * rate, "apparatus_share_median": 0.01, "queries": 10}

        def unloaded(lbt: float) -> dict:
            self.log.append((self.label, "unloaded"))
            return {"p50_ms": 2.0 * self.ms_per_qps * 100, "p95_ms": 3.0 * self.ms_per_qps * 100}

        return RoundSide(search_lbt=search, load_point=load, unloaded=unloaded, first_start_qps=first_start)


def test_rounds_search_lbts_first_then_compare_at_the_median_baseline_rates():
    log: list = []
    base = FakeSide(BASELINE, [100.0, 120.0, 80.0], ms_per_qps=0.1, log=log)
    ours = FakeSide(RECFORGE, [400.0, 300.0, 500.0], ms_per_qps=0.02, log=log)
    results = run_rounds({RECFORGE: ours.side(350.0), BASELINE: base.side(90.0)}, 3, (0.25, 0.5, 0.8),
                         fallback_qps=10.0)
    # baseline first in every round, whatever the mapping's order; every LBT search before any load run
    sides_in_order = [entry[0] for entry in log if entry[1] == "lbt"]
    assert sides_in_order == [BASELINE, RECFORGE] * 3
    assert max(i for i, entry in enumerate(log) if entry[1] == "lbt") < min(
        i for i, entry in enumerate(log) if entry[1] == "load")
    # the load runs interleave too: baseline, RecForge, baseline, ... (all of a side's fractions together)
    load_sides = [entry[0] for entry in log if entry[1] in ("load", "unloaded")]
    assert load_sides == ([BASELINE] * 4 + [RECFORGE] * 4) * 3
    # each round's search starts at RESTART_FRACTION x the median of the side's LBTs so far (no spread asked for)
    assert base.starts == [90.0, RESTART_FRACTION * 100.0, RESTART_FRACTION * 110.0]
    assert ours.starts == [350.0, RESTART_FRACTION * 400.0, RESTART_FRACTION * 350.0]
    # both sides at the same rates, in every round: fractions of the baseline's MEDIAN LBT (100)
    for r in results:
        assert r["rates"] == {0.25: 25.0, 0.5: 50.0, 0.8: 80.0}
        assert r[BASELINE]["loads"].keys() == r[RECFORGE]["loads"].keys() == r["rates"].keys()
    assert sorted({entry[2] for entry in log if entry[1] == "load"}) == [25.0, 50.0, 80.0]
    assert [r[BASELINE]["lbt_qps"] for r in results] == [100.0, 120.0, 80.0]  # each round keeps its own LBTs
    summary = summarize_rounds(results, 0.8)
    per_round_lbt = [4.0, 2.5, 6.25]
    assert summary["throughput_ratio"]["median"] == pytest.approx(4.0)
    assert (summary["throughput_ratio"]["low"], summary["throughput_ratio"]["high"]) == (2.5, 6.25)
    assert [r["throughput_ratio"] for r in summary["per_round"]] == pytest.approx(per_round_lbt)
    p95 = (1 + 0.02 * 80.0) / (1 + 0.1 * 80.0)
    assert summary["latency_ratio"]["median"] == pytest.approx(p95)
    assert summary["rates"] == {"0.25": 25.0, "0.5": 50.0, "0.8": 80.0}
    assert summary["latency_ratio_at"]["0.25"]["n"] == 3 and summary["unloaded_ratio"]["median"] == pytest.approx(0.2)
    assert summary[BASELINE]["lbt_qps"]["median"] == 100.0 and summary[RECFORGE]["lbt_qps"]["median"] == 400.0
    assert summary[RECFORGE]["apparatus_share_at"]["0.8"]["median"] == 0.01
    assert summary["baseline_option"] == BASELINE and summary["baseline_options"][BASELINE]["median"] == 100.0


def test_the_baseline_option_with_the_higher_median_lbt_is_the_baseline():
    # NCF's case: 2 threads answer one query faster, 1 thread sustains more load; one lucky round must not decide
    log: list = []
    one = FakeSide("threads=1", [4400.0, 4300.0, 4500.0, 4450.0, 4350.0], ms_per_qps=0.001, log=log)
    two = FakeSide("threads=2", [2400.0, 5000.0, 2300.0, 2500.0, 2450.0], ms_per_qps=0.003, log=log)
    ours = FakeSide(RECFORGE, [7000.0, 6800.0, 7200.0, 6900.0, 7100.0], ms_per_qps=0.0005, log=log)
    results = run_rounds({"threads=1": one.side(4000.0), "threads=2": two.side(2000.0), RECFORGE: ours.side(6000.0)},
                         5, (0.25, 0.5, 0.8), fallback_qps=10.0, baselines=("threads=1", "threads=2"))
    # every option searched in every round, interleaved with RecForge; only the chosen one runs the loads
    assert [e[0] for e in log if e[1] == "lbt"] == ["threads=1", "threads=2", RECFORGE] * 5
    assert {e[0] for e in log if e[1] in ("load", "unloaded")} == {"threads=1", RECFORGE}
    assert all(r["baseline_option"] == "threads=1" for r in results)
    assert [r[BASELINE]["lbt_qps"] for r in results] == [4400.0, 4300.0, 4500.0, 4450.0, 4350.0]
    assert results[0]["rates"][0.5] == pytest.approx(0.5 * 4400.0)  # the chosen option's median LBT
    summary = summarize_rounds(results, 0.5)
    assert summary["baseline_options"]["threads=2"]["median"] == 2450.0  # the other option's figures are kept
    assert summary["baseline_options"]["threads=1"]["median"] == 4400.0
    assert summary["throughput_ratio"]["median"] == pytest.approx(statistics.median(
        [7000 / 4400, 6800 / 4300, 7200 / 4500, 6900 / 4450, 7100 / 4350]))
    # a tie goes to the first option listed; a missing option is refused
    assert best_option({"a": [1.0, 2.0], "b": [2.0, 1.0]}, ("a", "b")) == "a"
    assert best_option({"a": [1.0, 2.0], "b": [2.0, 1.0]}, ("b", "a")) == "b"
    with pytest.raises(ValueError, match="baseline options"):
        run_rounds({RECFORGE: ours.side(1.0)}, 1, (0.5,), fallback_qps=1.0, baselines=("threads=1",))


def test_round_starts_spread_over_one_ramp_step():
    # with the ramp factor as spread, the starts of the rounds cover one ramp step: the rounds' probed rates (and so
    # their LBTs) are not all on one lattice, so the median can average the search's resolution away
    lbts = [1000.0]
    starts = [round_start_qps(lbts, r, 50.0, spread=1.1) for r in range(1, 9)]
    low, high = RESTART_FRACTION * 1000.0, RESTART_FRACTION * 1000.0 * 1.1
    assert all(low <= s < high for s in starts)
    gaps = np.diff(sorted([low, *starts, high]))
    assert max(gaps) < 0.5 * (high - low)  # evenly spread: no half of the step left out
    assert round_start_qps([], 3, 50.0, spread=1.1) == 50.0  # no LBT yet: the side's first start
    assert round_start_qps([0.0, 0.0], 3, 50.0, spread=1.1) == 50.0  # nothing met the SLO: from the first start again
    assert round_start_qps([100.0, 300.0, 120.0], 0, 50.0) == RESTART_FRACTION * 120.0  # the median, not the last


def test_a_baseline_lbt_of_zero_compares_at_the_fallback_load():
    log: list = []
    base = FakeSide(BASELINE, [0.0], ms_per_qps=0.1, log=log)
    ours = FakeSide(RECFORGE, [50.0], ms_per_qps=0.02, log=log)
    (result,) = run_rounds({BASELINE: base.side(5.0), RECFORGE: ours.side(40.0)}, 1, (0.5, 1.0), fallback_qps=8.0)
    assert result["rates"] == {0.5: 4.0, 1.0: 8.0}
    summary = summarize_rounds([result], 1.0)
    assert summary["throughput_ratio"]["n"] == 0  # no ratio of an LBT of 0


def test_bench_config_headline_fraction_must_be_measured():
    assert BenchConfig().rounds == 5 and BenchConfig().load_fractions == (0.25, 0.5, 0.8)
    assert BenchConfig().load_fraction == 0.5  # the headline p95 ratio: off the baseline's knee
    with pytest.raises(ConfigError, match="load_fraction"):
        BenchConfig(load_fraction=0.7)


# ----------------------------------------------------------------------------------------------- apparatus share


def fake_load_result(arrival, issued, finish, errors=None):
    n = len(arrival)
    return SimpleNamespace(arrival_s=np.array(arrival), issued_s=np.array(issued), finish_s=np.array(finish),
                           query_errors=errors or [None] * n)


def test_apparatus_share_is_the_dispatchers_lateness_over_the_latency():
    result = fake_load_result([0.0, 1.0, 2.0, 3.0], [0.001, 1.0, 2.005, 3.0], [0.010, 1.004, 2.010, 3.1],
                              errors=[None, None, None, "timed out"])
    assert apparatus_shares(result) == pytest.approx([0.1, 0.0, 0.5])
    figures = apparatus_share_figures(result)
    assert figures["apparatus_share_median"] == pytest.approx(0.1)
    assert figures["apparatus_share_mean"] == pytest.approx(0.2)
    assert figures["dispatch_lag_ms_p95"] == pytest.approx(np.percentile([1.0, 0.0, 5.0], 95), abs=1e-6)
    none = apparatus_share_figures(fake_load_result([0.0], [0.0], [math.nan], errors=["failed"]))
    assert none["apparatus_share_median"] is None


# ------------------------------------------------------------------------------------------- bench lines, compare


def test_bench_line_format_and_parse_round_trip():
    line = format_bench_line("dlrm", "inprocess", {"latency_ratio": 0.1834, "throughput_ratio": 3.4,
                                                   "auc_ratio": 0.99951, "latency_ratio_low": None, "rounds": 5})
    assert line == ("bench: family=dlrm path=inprocess latency_ratio=0.1834 throughput_ratio=3.4 auc_ratio=0.9995 "
                    "latency_ratio_low=nan rounds=5")
    key, figures = parse_bench_line(line)
    assert key == ("dlrm", "inprocess") and figures["throughput_ratio"] == 3.4 and math.isnan(
        figures["latency_ratio_low"])
    text = f"some log\n{line}\nbench: family=din path=served latency_ratio=0.5\n"
    assert set(parse_bench_lines(text)) == {("dlrm", "inprocess"), ("din", "served")}
    with pytest.raises(ValueError, match="path"):
        format_bench_line("dlrm", "gpu", {})
    with pytest.raises(ValueError, match="plain name"):
        format_bench_line("dlrm x", "served", {})
    for bad, word in (("bench: family=dlrm latency_ratio=1", "path"), ("bench: family=a path=served x=abc",
                                                                       "not a number"),
                      ("bench: family=a path=served x", "key=value"), ("nope", "prefix")):
        with pytest.raises(DataError, match=word):
            parse_bench_line(bad)


def test_compare_reports_the_spread_between_two_runs(tmp_path, capsys):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("bench: family=dlrm path=inprocess latency_ratio=0.20 throughput_ratio=3.0 auc_ratio=1\n"
                 "bench: family=din path=served latency_ratio=0.5 throughput_ratio=2.0 auc_ratio=1\n")
    b.write_text("noise\nbench: family=dlrm path=inprocess latency_ratio=0.21 throughput_ratio=2.85 auc_ratio=1\n")
    rows = compare.spreads(parse_bench_lines(a.read_text()), parse_bench_lines(b.read_text()))
    assert [(r["family"], r["figure"]) for r in rows] == [("dlrm", "latency_ratio"), ("dlrm", "throughput_ratio"),
                                                          ("dlrm", "auc_ratio")]
    assert [r["spread"] for r in rows] == pytest.approx([0.05, -0.05, 0.0])
    assert compare.main([str(a), str(b)]) == 0
    assert "agree=True" in capsys.readouterr().out
    assert compare.main([str(a), str(b), "--tolerance", "0.04"]) == 1
    assert "> tolerance" in capsys.readouterr().out
    c = tmp_path / "c.txt"
    c.write_text("bench: family=wide_deep path=served latency_ratio=1\n")
    assert compare.main([str(a), str(c)]) == 2
    assert compare.main([str(a), str(tmp_path / "missing.txt")]) == 2


def test_family_bench_line_and_rounds_table_from_the_rounds_summary():
    from recforge.tools.bench.family import bench_line
    from recforge.tools.bench.report import rounds_table

    log: list = []
    base = FakeSide(BASELINE, [100.0, 120.0, 80.0, 90.0, 110.0], ms_per_qps=0.1, log=log)
    ours = FakeSide(RECFORGE, [400.0, 300.0, 500.0, 360.0, 330.0], ms_per_qps=0.02, log=log)
    results = run_rounds({BASELINE: base.side(90.0), RECFORGE: ours.side(350.0)}, 5, (0.25, 0.5, 0.8),
                         fallback_qps=10.0)
    summary = summarize_rounds(results, 0.8)
    family = {"family": "wide_deep", "rounds": {**summary, "apparatus_ceiling_qps": 9000.0, "apparatus_ratio": 18.0},
              "p95_ratio": summary["latency_ratio"]["median"], "lbt_ratio": summary["throughput_ratio"]["median"],
              "auc_ratio": 0.9996}
    key, figures = parse_bench_line(bench_line(family))
    assert key == ("wide_deep", "inprocess") and figures["rounds"] == 5 and figures["auc_ratio"] == 0.9996
    assert figures["throughput_ratio"] == pytest.approx(summary["throughput_ratio"]["median"], rel=1e-3)
    assert figures["throughput_ratio_low"] == pytest.approx(min(r["throughput_ratio"] for r in summary["per_round"]),
                                                            rel=1e-3)
    table = "\n".join(rounds_table([family]))
    assert "over 5 rounds (order statistics, 93.8% coverage)" in table
    assert "| wide_deep | baseline | 100 [80–120] |" in table and "| wide_deep | ratio |" in table
    assert "apparatus ceiling 9,000 qps = 18.0x the highest LBT" in table
