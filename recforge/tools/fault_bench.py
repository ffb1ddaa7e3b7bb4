"""The fleet's fault figures (``make bench-faults``): a supervised 2-node Triton fleet under steady valid open-loop
traffic through the balancer, one fault injected a few seconds in, the load kept running until the fleet has
recovered (or a timeout); per fault the requests sent and lost (by kind), detection and recovery seconds, p95
latency before / during / after, and whether a process was started by anyone but the supervisor.

Faults (:data:`recforge.tools.fault_bench_fleet.FAULTS`): ``kill9`` (SIGKILL of one node's tritonserver),
``sigstop`` (SIGSTOP of one node: hung, not dead; SIGCONT at the end of the run so that it can be cleaned up),
``queue`` (a burst far above one node's capacity sent straight to its own port while the valid traffic goes through
the balancer), ``haproxy`` (SIGKILL of the HAProxy master), ``haproxy-reload`` (SIGUSR2 to the HAProxy master:
a graceful reload under load). ``--repeats N`` runs the faults interleaved (A, B, C, A, B, C, ...), each on a fleet
that has recovered (a fleet that did not is brought down and up again by this tool before the next run, and that
run says so); node faults alternate their victim. The figures per run and their median and min-max per fault go to
``--out`` (JSON); the table is printed. The accounting is :mod:`recforge.tools.fault_bench_figures`.

The fleet runs in ``$RECFORGE_HOME/fault-bench`` (a user's fleet in ``$RECFORGE_HOME/fleet`` is never touched)
and is always brought down at the end. It serves what ``fleet up`` serves: the registry champion of ``--family`` /
``--target``, else the newest nightly model, or ``--onnx``/``--spec``.

CLI::

    python -m recforge.tools.fault_bench [--family dlrm] [--target cpu-triton] [--faults kill9,sigstop,...]
                                         [--repeats 3] [--config JSON] [--out faults.json]
                                         [--onnx M.onnx --spec spec.json [--profile P.json] [--model NAME]]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from recforge.core import config
from recforge.core import cpusets as cs
from recforge.core.cli import json_object, run_step
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError, RecForgeError
from recforge.core.hw import cpu_count, cpu_model, load_average
from recforge.core.timing import utc_now
from recforge.serving import fleet as fl
from recforge.serving.fleet.config import DEFAULT_FAMILY
from recforge.tools.fault_bench_figures import (
    FaultTimes,
    fault_figures,
    recovered_at,
    render_table,
    summarize,
    supervisor_detection,
)
from recforge.tools.fault_bench_fleet import (
    FAULTS,
    NODE_FAULTS,
    FleetObserver,
    fleet_full,
    fleet_pids,
    inject,
    prepare_burst,
    started_by,
)
from recforge.tools.fault_bench_traffic import ValidTraffic

FaultName = Literal["kill9", "sigstop", "queue", "haproxy", "haproxy-reload"]
# The bench's supervisor: the fleet's defaults, except that restarts of earlier repeats leave the crash-loop window
# before the next fault on the same node (each fault is a first failure: no backoff, no crash-loop alarm)
BENCH_SUPERVISOR = {"restart_window_s": 20.0}
READY_WAIT_S = 120.0  # a fleet must be full this long after a run at most (else it is replaced)


@typed_config
class FaultBenchConfig:
    """Settings of the fault runs (``--config`` JSON; ``--faults`` and ``--repeats`` override theirs)."""

    faults: tuple[FaultName, ...] = tuple(FAULTS)  # type: ignore[assignment]
    repeats: Annotated[int, Field(ge=1, le=20)] = 3
    nodes: Annotated[int, Field(ge=2, le=fl.MAX_NODES)] = 2
    rate_qps: Annotated[float, Field(gt=0, le=2000)] = 40.0  # the valid traffic through the balancer
    arrivals: Literal["poisson", "fixed"] = "poisson"
    items: Annotated[int, Field(ge=1, le=1024)] = 16  # rows per valid request
    request_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0  # a valid request without an answer by then
    client_threads: Annotated[int, Field(ge=1, le=512)] = 64  # sending the valid traffic
    before_s: Annotated[float, Field(ge=0.5, le=600)] = 5.0  # load before the fault (the "before" p95)
    settle_s: Annotated[float, Field(ge=0.5, le=600)] = 3.0  # full fleet and no loss this long = recovered
    recovery_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 90.0  # after the fault: not recovered
    poll_interval_s: Annotated[float, Field(ge=0.02, le=10)] = 0.1  # fleet observations
    burst_s: Annotated[float, Field(gt=0, le=600)] = 5.0  # the queue fault's burst
    burst_concurrency: Annotated[int, Field(ge=1, le=1024)] = 64
    burst_items: Annotated[int, Field(ge=1, le=65536)] | None = None  # None: the model's max_batch_size
    check_inter_ms: Annotated[int, Field(ge=50, le=60_000)] = 500  # HAProxy health checks (FleetConfig's)
    # CPU placement (FleetConfig's fields; 0: off): the bench's load generator runs on the plan's apparatus CPUs
    node_cpus: Annotated[int, Field(ge=0, le=256)] = 0
    cpu_quota: Annotated[float, Field(ge=0, le=256)] = 0.0
    share_cpus: bool = False
    # SupervisorConfig fields over BENCH_SUPERVISOR (the fleet's defaults otherwise)
    supervisor: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: Annotated[int, Field(ge=0)] = 0  # of the valid traffic's arrivals (the n-th run: seed + n)

    def __post_init__(self) -> None:
        if not self.faults or len(set(self.faults)) != len(self.faults):
            raise ConfigError(f"FaultBenchConfig.faults must name each fault once, got {list(self.faults)}")
        self.supervisor_config()

    def supervisor_config(self) -> fl.SupervisorConfig:
        return config_from_dict(fl.SupervisorConfig, {**BENCH_SUPERVISOR, **self.supervisor})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> FaultBenchConfig:
        return config_from_dict(cls, dict(values or {}))


def bench_root(home: str | Path | None = None) -> Path:
    return Path(home if home is not None else config.recforge_home()) / "fault-bench"




def wait_until_full(fleet_home: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if fleet_full(fleet_home)[0]:
            return True
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------------------------------------------
# One run


def run_fault(fault: str, fleet_home: Path, source: fl.ModelSource, cfg: FaultBenchConfig, *,
              victim: str | None, seed: int = 0) -> dict[str, Any]:
    """One fault under load on the (full) fleet of ``fleet_home`` (``seed``: of the valid traffic's arrivals): its
    figures and what happened."""
    state = fl.read_state(fleet_home)
    if state is None:
        raise RecForgeError(f"no fleet in {fl.fleet_dir(fleet_home)}")
    pids_before = fleet_pids(state)
    traffic = ValidTraffic(state["url"], source.model, source.spec_path, rate_qps=cfg.rate_qps, items=cfg.items,
                           arrivals=cfg.arrivals, threads=cfg.client_threads, timeout_s=cfg.request_timeout_s,
                           seed=seed)
    burst = prepare_burst(fault, fleet_home, victim, model=source.model, spec=source.spec_path,
                          items=cfg.burst_items, concurrency=cfg.burst_concurrency, duration_s=cfg.burst_s)
    observer = FleetObserver(fleet_home, victim, cfg.poll_interval_s).start()
    injected = None
    try:
        traffic.start()
        time.sleep(cfg.before_s)
        fault_at = time.time()
        injected = inject(fault, fleet_home, victim, burst=burst)
        fault_at = injected.started_at or fault_at
        cleared_at = fault_at
        while True:
            time.sleep(0.2)
            now = time.time()
            if now - fault_at >= cfg.recovery_timeout_s:
                break
            if injected.burst is not None:
                if not injected.burst.done():
                    continue
                cleared_at = injected.burst.last_end
            records, oldest_in_flight = traffic.snapshot()
            recovered = recovered_at(records, observer.snapshot(), FaultTimes(fault_at, cleared_at, now))
            if recovered is not None and now - recovered >= cfg.settle_s and \
                    (oldest_in_flight is None or oldest_in_flight >= recovered):
                break
        end_at = time.time()
    finally:
        records = traffic.stop()
        observations = observer.stop()
        details = injected.cleanup() if injected is not None else {}
        if burst is not None and injected is None:  # prepared, never released
            burst.join()
    state_after = fl.read_state(fleet_home) or {}
    supervisor = state_after.get("supervisor") or state.get("supervisor") or {}
    log_path = Path(supervisor.get("log") or fl.fleet_dir(fleet_home) / "supervisor.log")
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    subject = victim if fault in NODE_FAULTS else "haproxy"
    times = FaultTimes(fault_at, cleared_at, end_at,
                       supervisor_detection(log_text, fault_at, subject) if fault != "haproxy-reload" else None)
    figures = fault_figures(records, observations, times, watch=FAULTS[fault], settle_s=cfg.settle_s)
    replaced = {}
    for name, pid in (fleet_pids(state_after) if state_after else {}).items():
        if pid != pids_before.get(name):
            replaced[name] = {"old_pid": pids_before.get(name), "new_pid": pid,
                              "started_by": started_by(pid, supervisor.get("pid"))}
    figures["hand_started"] = any(r["started_by"] not in ("supervisor", "gone") for r in replaced.values())
    full, view = fleet_full(fleet_home)
    return {"fault": fault, "victim": victim, "injected": details, "replaced": replaced, "fleet_after": view,
            "full_after": full, **figures}


# --------------------------------------------------------------------------------------------------------------
# The runs


def run_faults(source: fl.ModelSource, cfg: FaultBenchConfig | None = None, *, target: str = fl.DEFAULT_TARGET,
               home: str | Path | None = None, notes: Sequence[str] = (),
               progress: Any = None) -> dict[str, Any]:
    """Every fault of ``cfg`` ``cfg.repeats`` times, interleaved, on a supervised fleet of ``source``; returns the
    document (runs, summary per fault). The fleet is down afterwards."""
    cfg = cfg or FaultBenchConfig()
    fleet_home = bench_root(home)
    fleet_cfg = fl.FleetConfig(nodes=cfg.nodes, port=0, target=target, check_inter_ms=cfg.check_inter_ms,
                               node_cpus=cfg.node_cpus, cpu_quota=cfg.cpu_quota, share_cpus=cfg.share_cpus)
    plan = fleet_cfg.cpu_plan(cs.host_cpus())
    apparatus = plan.placements.get(cs.APPARATUS) if plan else None
    group = cs.CpuGroup(f"fault-bench-{os.getpid()}-apparatus", apparatus) if apparatus else None
    supervisor_cfg = cfg.supervisor_config()
    say = progress or (lambda _line: None)
    doc: dict[str, Any] = {
        "measured_at": utc_now(), "source": source.origin, "model": source.model, "version": source.version,
        "target": target, "nodes": cfg.nodes, "notes": list(notes),
        "machine": {"cpus": cpu_count(), "cpu_model": cpu_model(), "loadavg_before": load_average()},
        "settings": dataclasses.asdict(cfg), "supervisor": dataclasses.asdict(supervisor_cfg), "runs": [],
        "placement": plan.describe() if plan else "off: load generator, balancer and nodes on every CPU",
    }
    started = time.monotonic()
    order = [(repeat, fault) for repeat in range(cfg.repeats) for fault in cfg.faults]
    node_turn = 0
    last_hit: dict[str, float] = {}  # node -> when its last fault's run ended (the crash-loop window)

    def bring_up() -> None:
        fl.down(home=fleet_home)
        fl.up(source, fleet_cfg, home=fleet_home, notes=notes, supervisor=supervisor_cfg)

    try:
        bring_up()
        for index, (repeat, fault) in enumerate(order):
            if not wait_until_full(fleet_home, READY_WAIT_S):
                say("the fleet is not full: bringing it down and up again")
                bring_up()
                last_hit.clear()
            victim = None
            if fault in NODE_FAULTS:
                nodes = list((fl.read_state(fleet_home) or {})["nodes"])
                victim = nodes[node_turn % len(nodes)]
                node_turn += 1
                wait = last_hit.get(victim, 0.0) + supervisor_cfg.restart_window_s + 1 - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            say(f"repeat {repeat + 1}/{cfg.repeats}: {fault}{f' on {victim}' if victim else ''}")
            with cs.this_process_in(group) if group else contextlib.nullcontext():
                run = run_fault(fault, fleet_home, source, cfg, victim=victim, seed=cfg.seed + index)
            run["repeat"] = repeat
            if victim:
                last_hit[victim] = time.monotonic()
            if not run["recovered"] or not wait_until_full(fleet_home, READY_WAIT_S):
                run["fleet_replaced_after"] = True  # by this tool, for the next run: not part of the figures
                bring_up()
                last_hit.clear()
            doc["runs"].append(run)
            say(f"  sent {run['sent']}, lost {run['lost']}, recovered {run['recovered']}, "
                f"recovery {run['recovery_s']} s")
    finally:
        with contextlib.suppress(Exception):
            fl.down(home=fleet_home)
        if group is not None:
            group.remove()
    doc["summary"] = {fault: summarize([r for r in doc["runs"] if r["fault"] == fault]) for fault in cfg.faults}
    doc["machine"]["loadavg_after"] = load_average()
    doc["duration_s"] = round(time.monotonic() - started, 1)
    return doc


def render(doc: Mapping[str, Any]) -> str:
    """The table with the load and the machine it ran on."""
    s, m = doc["settings"], doc["machine"]
    head = (f"### Fault figures: {doc['model']} v{doc['version']} on {doc['nodes']} x {doc['target']} "
            f"(measured {doc['measured_at']})\n\nsource: {doc['source']}\n\n"
            f"valid load: {s['arrivals']} {s['rate_qps']:g} qps of {s['items']} rows through the balancer, "
            f"client timeout {s['request_timeout_s']:g} s; fault after {s['before_s']:g} s; recovered = full fleet and "
            f"no loss for {s['settle_s']:g} s (timeout {s['recovery_timeout_s']:g} s); {s['repeats']} repeat(s), "
            f"median (min–max); {m['cpus']} CPUs, 1-min load average before/after "
            f"{(m.get('loadavg_before') or ['?'])[0]} / {(m.get('loadavg_after') or ['?'])[0]}\n\n"
            f"CPU placement: {doc.get('placement') or 'not recorded'}\n\n")
    return head + render_table(doc["summary"])


def write_json(doc: Mapping[str, Any], out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.fault_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--family", default=os.environ.get("FLEET_FAMILY", DEFAULT_FAMILY),
                        help="model family: registry champion recforge-<family>, else the newest nightly model")
    parser.add_argument("--target", default=fl.DEFAULT_TARGET, help="hardware target (champion, profile)")
    parser.add_argument("--faults", help=f"comma-separated, in this order (default all: {','.join(FAULTS)})")
    parser.add_argument("--repeats", type=int, help="runs of each fault, interleaved (default 3)")
    parser.add_argument("--config", default="{}", help="FaultBenchConfig fields as a JSON object")
    parser.add_argument("--out", help="JSON results (default $RECFORGE_HOME/bench/fault_figures.json)")
    parser.add_argument("--onnx", help="serve this ONNX file (with --spec) instead of the champion")
    parser.add_argument("--spec", help="the model's spec.json")
    parser.add_argument("--profile", help="its profile JSON (serving config and weights come from it)")
    parser.add_argument("--model", default="model", help="Triton model name for --onnx")
    args = parser.parse_args(argv)

    def step() -> Any:
        values = json_object(args.config)
        if args.faults:
            values["faults"] = [f.strip() for f in args.faults.split(",") if f.strip()]
        if args.repeats is not None:
            values["repeats"] = args.repeats
        cfg = FaultBenchConfig.from_dict(values)
        notes: list[str] = []
        if args.onnx or args.spec:
            if not (args.onnx and args.spec):
                raise ConfigError("--onnx and --spec go together")
            source = fl.explicit_source(args.onnx, args.spec, profile_path=args.profile, model=args.model)
        else:
            dest = bench_root() / "source"
            source, notes = fl.default_source(args.family, args.target, dest=dest)
        print(f"fault figures of {source.origin}: {', '.join(cfg.faults)} x {cfg.repeats} (1-min load average "
              f"{load_average()[:1]})", file=sys.stderr, flush=True)
        doc = run_faults(source, cfg, target=args.target, notes=notes,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
        out = write_json(doc, args.out or Path(config.recforge_home()) / "bench" / "fault_figures.json")
        print(render(doc))
        return {"json": str(out), "duration_s": doc["duration_s"],
                "recovered": {f: f"{s['recovered']}/{s['repeats']}" for f, s in doc["summary"].items()}}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
