"""Racing search against the exhaustive grid on a real Triton node (``python -m
recforge.pipeline.profiling.search_check``).

Over one small Triton knob space (instances x max_batch_size x preferred batch sizes x queue delay x client
sub-batch; combinations Triton would refuse are skipped) for one ONNX model (default: a tiny NCF of the example
feature spec) on a real ``tritonserver`` (``targets.cpu_triton.CpuTriton``), it runs

1. the exhaustive grid: a full LBT search of every valid setting;
2. the racing coordinate search (``search.race``) from plain serving, with a load-run budget of
   ``budget_fraction`` (default 1/5) of the runs the grid took;
3. the two picks re-measured in ``rounds`` interleaved rounds (grid pick, race pick, race pick, grid pick, ...;
   a fresh LBT search each, finer tolerance, longer load runs): the grid's best figure is the maximum of many
   noisy searches and so overstates its pick. ``lbt_ratio`` is the median over the rounds of each round's
   race/grid ratio, with an order-statistic interval (``recforge.core.intervals``) — the same paired statistic as
   ``make bench``'s ratios: the two searches of one round ran back to back under the same machine conditions.

With ``isolate`` (the default) the server and its backend stubs run on their own CPU set and this process, the load
generator, on another (``CpuTriton(isolate=True)``): on shared CPUs the client's own work cost the node
about a fifth of its LBT and spread repeated searches of one setting more (docs/profiling.md). It prints the
configurations, LBTs, load runs and seconds of each and ends with one machine-readable line::

    search_check: grid_configs=24 grid_runs=... grid_s=... grid_lbt=... race_configs=... race_screens=...
        race_runs=... race_budget=... race_s=... race_lbt=... same_pick=0|1 remeasured_grid_lbt=...
        remeasured_race_lbt=... lbt_ratio=... lbt_ratio_low=... lbt_ratio_high=... lbt_ratio_coverage=...
        runs_ratio=...
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from recforge.contracts.features import example_spec
from recforge.core.cli import json_object
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError, RecForgeError
from recforge.core.intervals import MedianInterval, median_interval
from recforge.inference.loadgen import QuerySizes, run_open_loop
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.pipeline.profiling.lbt import FiniteRate, LBTConfig, LBTEvaluator, Measurement, lbt_from_config
from recforge.pipeline.profiling.search.axes import triton_knobs_valid
from recforge.pipeline.profiling.search.base import SearchResult, knob_key
from recforge.pipeline.profiling.search.grid import GridSearch
from recforge.pipeline.profiling.search.lbt_probe import LBTProbe
from recforge.pipeline.profiling.search.race import RacingCoordinateSearch
from recforge.pipeline.profiling.targets.cpu_triton import CpuTriton

# 2 x 2 x 2 x 2 x 2 = 32 combinations, 24 valid (a 256-item sub-batch does not fit max_batch_size 128)
DEFAULT_AXES: dict[str, list[Any]] = {
    "sub_batch": [64, 256], "instances": [1, 2], "queue_delay_us": [0, 1000], "preferred_batch": [[], [128]],
    "max_batch_size": [128, 512],
}
PLAIN_SERVING: dict[str, Any] = {"sub_batch": 256, "instances": 1, "queue_delay_us": 0, "preferred_batch": [],
                                 "max_batch_size": 512}


@typed_config
class SearchCheckConfig:
    """Settings of one grid-against-race check (``--config`` JSON; unknown keys refused)."""

    axes: dict[str, list[Any]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_AXES)))
    start: dict[str, Any] = field(default_factory=lambda: dict(PLAIN_SERVING))
    p95_target_ms: FiniteRate = 50.0
    point_duration_s: Annotated[float, Field(gt=0, le=60)] = 0.5  # one open-loop load run
    start_qps: FiniteRate = 50.0
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.05
    max_steps: Annotated[int, Field(ge=2, le=50)] = 12  # probed rates per LBT search
    sizes: str = "lognormal"  # recforge.inference.loadgen.QuerySizes.parse syntax
    workers: Annotated[int, Field(ge=1, le=64)] = 4  # load-generator threads: concurrent HTTP requests
    threads: Annotated[int, Field(ge=1, le=64)] = 1  # onnxruntime intra-op threads per instance
    budget_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2  # the race's load runs / the grid's
    rounds: Annotated[int, Field(ge=1, le=20)] = 9  # interleaved re-measurements of the two picks
    remeasure_tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.03
    remeasure_duration_s: Annotated[float, Field(gt=0, le=60)] = 1.0  # one load run of the re-measurement
    isolate: bool = True  # the load generator and the server on disjoint CPU sets (needs 2 CPUs)
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0

    def __post_init__(self) -> None:
        QuerySizes.parse(self.sizes)
        GridSearch(self.axes, fixed={"workers": self.workers}, valid=triton_knobs_valid).points()
        RacingCoordinateSearch(self.axes, self.start, valid=triton_knobs_valid)  # the start is on the axes, valid
        if "max_batch_size" not in self.axes:
            raise ConfigError("SearchCheckConfig.axes needs a max_batch_size axis (the Triton models' sizes)")

    def lbt_config(self) -> LBTConfig:
        return LBTConfig(p95_target_ms=self.p95_target_ms, start_qps=self.start_qps, tolerance=self.tolerance,
                         max_steps=self.max_steps)


class CountedMeasure:
    """A ``Measure`` that counts its load runs (one call, one run)."""

    def __init__(self, measure: Callable[[float, dict], Measurement]):
        self.measure, self.runs = measure, 0

    def __call__(self, rate: float, knobs: dict) -> Measurement:
        self.runs += 1
        return self.measure(rate, knobs)


def triton_measure(target: CpuTriton, onnx_path: Path, spec: Any, cfg: SearchCheckConfig) -> Callable:
    """measure(rate, knobs, duration_s=point_duration_s): one open-loop run against the knob setting's model on
    the target's server (one model per serving config; sub_batch and workers are the client's)."""
    sizes = QuerySizes.parse(cfg.sizes)
    settings: dict[str, Any] = {}

    def measure(rate: float, knobs: dict, duration_s: float = cfg.point_duration_s) -> Measurement:
        key = knob_key({k: v for k, v in knobs.items() if k not in ("sub_batch", "workers")})
        if key not in settings:
            settings[key] = target.make_load_target(onnx_path, spec, dict(knobs))
        used = settings[key]
        used.activate()
        result = run_open_loop(used, rate, duration_s=duration_s, sizes=sizes,
                               sub_batch=int(knobs["sub_batch"]), workers=int(knobs["workers"]), seed=cfg.seed)
        return Measurement.from_load(result, rate, duration_s)

    return measure


def remeasure(measure: Callable, picks: Sequence[Mapping[str, Any]], config: LBTConfig,
              rounds: int) -> list[list[float]]:
    """[[LBT of pick i in round r for r in rounds] for i]: fresh LBT searches, interleaved (ABBA... order)."""
    values: list[list[float]] = [[] for _ in picks]
    for r in range(rounds):
        order = list(range(len(picks))) if r % 2 == 0 else list(reversed(range(len(picks))))
        for i in order:
            values[i].append(lbt_from_config(measure, dict(picks[i]), config).lbt_qps)
    return values


def compare_grid_and_race(onnx_path: str | Path, spec: Any, cfg: SearchCheckConfig | None = None, *,
                          work_root: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid, the race and the interleaved re-measurement of their picks (module docstring); returns
    the figures of the final line as a dict (plus ``grid_pick``/``race_pick`` knobs and the raw rounds)."""
    cfg = cfg or SearchCheckConfig()
    target = CpuTriton(threads=cfg.threads, max_batch=max(int(b) for b in cfg.axes["max_batch_size"]),
                       seed=cfg.seed, work_root=work_root, isolate=cfg.isolate)
    ok, why = target.available()
    if not ok:
        raise RecForgeError(f"no tritonserver here: {why}")
    log(f"target: {target.describe()}")
    try:
        with target.apparatus():
            return race_against_grid(target, Path(onnx_path), spec, cfg, log)
    finally:
        target.close()


def race_against_grid(target: CpuTriton, onnx_path: Path, spec: Any, cfg: SearchCheckConfig,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Steps 1-3 of the module docstring on ``target`` (the caller places and closes it)."""
    fixed = {"workers": cfg.workers}
    lbt = cfg.lbt_config()
    measure = triton_measure(target, onnx_path, spec, cfg)
    grid_measure = CountedMeasure(measure)
    t0 = time.perf_counter()
    grid = GridSearch(cfg.axes, fixed=fixed, valid=triton_knobs_valid).search(LBTEvaluator(grid_measure, lbt))
    grid_s = time.perf_counter() - t0
    log(f"grid : {len(grid.evaluations)} configurations, {grid_measure.runs} load runs, {grid_s:.1f} s; "
        f"best LBT {grid.best_value:g} qps at {knobs_text(grid.best_knobs)}")
    budget = max(1, int(cfg.budget_fraction * grid_measure.runs))
    race_measure = CountedMeasure(measure)
    t0 = time.perf_counter()
    race = RacingCoordinateSearch(cfg.axes, cfg.start, fixed=fixed, valid=triton_knobs_valid,
                                  max_runs=budget).search(LBTProbe(LBTEvaluator(race_measure, lbt)))
    race_s = time.perf_counter() - t0
    log(f"race : {len(race.evaluations)} full LBT searches + {len(race.screens)} screens, {race_measure.runs} "
        f"load runs (budget {budget}), {race_s:.1f} s; best LBT {race.best_value:g} qps at "
        f"{knobs_text(race.best_knobs)}")
    log(f"       {race.note}")
    same = knob_key(grid.best_knobs) == knob_key(race.best_knobs)
    picks = [grid.best_knobs] if same else [grid.best_knobs, race.best_knobs]
    # each re-measurement starts at half the lower pick's figure: a search climbing from start_qps passes more
    # rates, and one noisy run on the way up ends it low
    found = [v for v in (grid.best_value, race.best_value) if v > 0]
    start = 0.5 * min(found) if found else cfg.start_qps
    fine = dataclasses.replace(lbt, start_qps=max(start, 1.0), tolerance=min(cfg.remeasure_tolerance, cfg.tolerance))
    rounds = remeasure(functools.partial(measure, duration_s=cfg.remeasure_duration_s), picks, fine, cfg.rounds)
    grid_rounds, race_rounds = rounds[0], rounds[-1]
    grid_median, race_median = statistics.median(grid_rounds), statistics.median(race_rounds)
    ratio = paired_ratio(grid_rounds, race_rounds, same)
    log(f"re-measured ({cfg.rounds} interleaved rounds of {cfg.remeasure_duration_s:g} s load runs): grid pick "
        f"{grid_median:g} qps {grid_rounds}, race pick {race_median:g} qps {race_rounds}"
        + (" (the same configuration)" if same else "") + f"; race/grid per round: median {ratio.text('.4g')} "
        f"({ratio.coverage:.1%} interval)")
    return {
        "grid_configs": len(grid.evaluations), "grid_runs": grid_measure.runs, "grid_s": round(grid_s, 1),
        "grid_lbt": grid.best_value, "race_configs": len(race.evaluations), "race_screens": len(race.screens),
        "race_runs": race_measure.runs, "race_budget": budget, "race_s": round(race_s, 1),
        "race_lbt": race.best_value, "same_pick": int(same), "remeasured_grid_lbt": grid_median,
        "remeasured_race_lbt": race_median, "lbt_ratio": round(ratio.median, 4),
        "lbt_ratio_low": round(ratio.low, 4), "lbt_ratio_high": round(ratio.high, 4),
        "lbt_ratio_coverage": round(ratio.coverage, 4),
        "runs_ratio": round(race_measure.runs / grid_measure.runs, 4),
        "grid_pick": grid.best_knobs, "race_pick": race.best_knobs, "rounds": {"grid": grid_rounds,
                                                                                "race": race_rounds},
        "grid_result": summary(grid), "race_result": summary(race),
    }


def paired_ratio(grid_rounds: Sequence[float], race_rounds: Sequence[float], same: bool) -> MedianInterval:
    """The median over the rounds of race LBT / grid LBT in the same round, with its interval; exactly 1 when
    both picks are the same configuration (then only one was re-measured). A round where the grid's pick served
    nothing while the race's served some counts as a ratio above any bound (the race's pick did better)."""
    if same:
        return MedianInterval(1.0, 1.0, 1.0, 1.0, len(grid_rounds))
    ratios = [r / g if g > 0 else (1.0 if r <= 0 else 1e9) for g, r in zip(grid_rounds, race_rounds, strict=True)]
    return median_interval(ratios)


def summary(result: SearchResult) -> dict[str, Any]:
    return {"strategy": result.strategy, "evaluations": len(result.evaluations), "screens": len(result.screens),
            "note": result.note}


def knobs_text(knobs: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in knobs.items() if k != "workers")


def final_line(figures: Mapping[str, Any]) -> str:
    """``search_check: key=value ...`` of the scalar figures (the line a script reads)."""
    return "search_check: " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in figures.items() if isinstance(v, int | float))


def tiny_model(folder: Path) -> tuple[Path, Any]:
    """A tiny NCF of the example feature spec, exported to ``folder/ncf.onnx``: (onnx path, spec)."""
    spec = example_spec()
    return export_onnx(build_model("ncf", spec).eval(), spec, folder / "ncf.onnx"), spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.profiling.search_check",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--onnx", default=None, help="ONNX model (default: a tiny NCF of the example spec)")
    parser.add_argument("--spec", default=None, help="feature spec JSON of --onnx")
    parser.add_argument("--config", default=None, help="SearchCheckConfig fields as a JSON object")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if (args.onnx is None) != (args.spec is None):
        parser.error("--onnx and --spec go together")
    try:
        cfg = config_from_dict(SearchCheckConfig, json_object(args.config))
        with tempfile.TemporaryDirectory(prefix="search-check-") as tmp:
            onnx_path, spec = (Path(args.onnx), args.spec) if args.onnx else tiny_model(Path(tmp))
            figures = compare_grid_and_race(onnx_path, spec, cfg, work_root=tmp)
    except RecForgeError as err:
        print(f"error: {err}")
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(final_line(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
