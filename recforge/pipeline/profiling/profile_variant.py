"""Profiling one variant: :func:`profile_variant` measures the latency-bounded throughput (LBT) of one ONNX
variant on one hardware target and returns its profile document; :func:`profile_all` profiles it on every
target and reports a failing or unavailable one on one line without stopping the others.

Every LBT probe is an open-loop ``run_open_loop`` of ``point_duration_s`` seconds; ``search_space.knob_search``
searches the target's knob axes (``search_space``) with the racing coordinate search; the
single-request latency against batch size is measured with onnxruntime (or through the target's own serving
stack); the result is validated against ``recforge/contracts/profile_schema.json``.

CLI::

    python -m recforge.pipeline.profiling.profile_variant --onnx M.onnx --spec spec.json --family F \\
        --variant V --accuracy '{"auc": 0.78, "delta_auc": -0.001}' --run-id RUNID [--out profile.json] \\
        [--config JSON] [--targets cpu-onnxruntime,cpu-triton]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.contracts.profile import json_ready, validate_profile
from recforge.contracts.targets import CPU_ONNXRUNTIME, CPU_TRITON, GPU_ONNXRUNTIME, PROFILED_TARGETS
from recforge.core.cli import json_object, run_step
from recforge.core.errors import ConfigError, RecForgeError
from recforge.core.hashing import sha256_file
from recforge.inference.loadgen import load_spec, run_open_loop
from recforge.inference.onnx import onnx_latency_ms
from recforge.models.export import example_inputs
from recforge.pipeline.profiling.document import build_profile, load_doc
from recforge.pipeline.profiling.lbt import LBTEvaluator, Measurement, challenge_rate, confirm_lbt, lbt_from_config
from recforge.pipeline.profiling.profile_config import ProfileConfig
from recforge.pipeline.profiling.search.base import SearchResult, knob_key
from recforge.pipeline.profiling.search.lbt_probe import WINNER_RAMP_FACTOR, LBTProbe
from recforge.pipeline.profiling.search_space import knob_search, search_space
from recforge.pipeline.profiling.targets.base import HardwareTarget, apparatus_of, close_parts, failure_reason
from recforge.pipeline.profiling.targets.factory import probe_targets, resolve_targets

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id, as the profile schema wants
CLI_TARGETS = (CPU_ONNXRUNTIME, CPU_TRITON, GPU_ONNXRUNTIME)  # the CLI's default (the hybrid on request)
RIVAL_MARGIN = 0.03  # a later variant is challenged at its family's best LBT x (1 + this), at that one's knobs
RIVAL_SCREEN = "rival_screen"  # the profile's search.strategy of a variant measured at its rival's knobs only


@dataclass(frozen=True)
class Rival:
    """The best profile of a variant's family on one target so far: its searched knobs, at which a later variant
    is measured, and its LBT, at which that variant is challenged first (``stage.profile_family``)."""

    variant: str
    knobs: dict
    lbt_qps: float


def latency_vs_batch(onnx_path: str | Path, spec: Any, batches: Sequence[int], threads: int, repeats: int,
                     seed: int = 0) -> dict[int, float]:
    """{batch: median ms of one onnxruntime request of that many items} (no queueing)."""
    spec = load_spec(spec)
    return {int(b): onnx_latency_ms(onnx_path, example_inputs(spec, int(b), seed), threads=threads,
                                    repeats=repeats, warmup=min(3, repeats))
            for b in sorted(set(batches))}


def profile_variant(onnx_path: str | Path, spec: Any, target: HardwareTarget, *, family: str, variant: str,
                    variant_run_id: str, accuracy: Mapping[str, float], cfg: ProfileConfig | None = None,
                    rival: Rival | None = None, close_target: bool = True,
                    traffic: Mapping[str, Any] | None = None) -> dict:
    """The validated profile document of ``onnx_path`` on ``target`` (LBT search over the knobs, LBT curve at the
    best knobs, latency against batch size). With a ``rival`` (the family's best profile on this target so far),
    the variant is measured at the rival's knobs instead of searching them again (:func:`rival_screen`).
    The target is closed at the end (its server stopped) unless ``close_target`` is False: the caller profiles
    more variants on it and closes it. ``traffic``: the served traffic whose sizes ``cfg.sizes`` replays
    (``served_traffic.traffic_entry``: run id, window, observed peak rate), recorded as the profile's
    ``load.traffic``. Raises when the target cannot serve the model."""
    cfg = cfg or ProfileConfig()
    check_run_id(variant_run_id)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError(f"onnx_path {onnx_path} is not a file")
    sizes = cfg.query_sizes()
    axes, fixed, start = search_space(target, cfg)
    load_targets: dict[str, Any] = {}  # one loaded model per knob setting that changes the session

    def load_target(knobs: Mapping[str, Any]) -> Any:
        key = json.dumps({k: v for k, v in knobs.items() if k not in ("sub_batch", "workers", "gpu_threshold",
                                                                       "gpu_workers")}, sort_keys=True)
        if key not in load_targets:
            load_targets[key] = target.make_load_target(onnx_path, spec, dict(knobs))
        elif hasattr(load_targets[key], "activate"):  # a server-side setting another one may have displaced
            load_targets[key].activate()
        return load_targets[key]

    def measure(rate: float, knobs: dict) -> Measurement:
        used = load_target(knobs)
        offload = used.offload(knobs) if "gpu_threshold" in knobs else None  # a hybrid target's GPU part
        result = run_open_loop(used, rate, duration_s=cfg.point_duration_s, sizes=sizes,
                               sub_batch=int(knobs["sub_batch"]), workers=int(knobs.get("workers", cfg.workers)),
                               seed=cfg.seed, offload=offload)
        return Measurement.from_load(result, rate, cfg.point_duration_s)

    evaluator = LBTEvaluator(measure, cfg.lbt_config(), warm_start=True)
    notes = []
    clock = [time.monotonic()]
    try:
        with apparatus_of(target):  # a server-side target keeps the load generator off its CPUs
            search = rival_screen(evaluator, rival, axes, fixed) if rival is not None else None
            if search is None:
                search = knob_search(target, cfg, axes, fixed, start).search(LBTProbe(evaluator))
            clock.append(time.monotonic())
            # the search compares single short runs; a figure that can make the variant its target's champion is
            # re-measured (one below its family's best so far cannot: registration takes the best LBT)
            found = evaluator.result_for(search.best_knobs)
            can_win = rival is None or found.lbt_qps > rival.lbt_qps
            lbt = confirm_lbt(measure, found, cfg.confirm if can_win else 0, cfg.start_qps)
            if not can_win:
                notes.append(f"not re-measured: its LBT is below {rival.variant}'s ({rival.lbt_qps:g} qps), so it "
                             "cannot be this target's champion")
            clock.append(time.monotonic())
            threads = int(search.best_knobs.get("threads", getattr(target, "threads", 1)))
            if hasattr(target, "latency_vs_batch"):  # through the target's own serving stack
                batch_ms = target.latency_vs_batch(load_target(search.best_knobs), cfg.latency_batches,
                                                   cfg.latency_repeats)
                notes.append("latency_vs_batch measured through the server at the best knobs (HTTP round trip "
                             "included)")
            else:
                batch_ms = latency_vs_batch(onnx_path, spec, cfg.latency_batches, threads, cfg.latency_repeats,
                                            cfg.seed)
            device = target.describe()
    finally:  # servers and sessions end with the variant's profiling, also when it fails
        close_parts(*load_targets.values(), *([target] if close_target else []))
    clock.append(time.monotonic())
    started, searched, confirmed, ended = clock
    load = load_doc(sizes, axes["sub_batch"])
    if traffic:
        load["traffic"] = dict(traffic)
    spent = (f"profiled in {ended - started:.1f} s: search {searched - started:.1f} s, confirmation "
             f"{confirmed - searched:.1f} s, latency vs batch and shutdown {ended - confirmed:.1f} s")
    log.info("%s/%s on %s %s", family, variant, target.name, spent)
    doc = build_profile(
        model_family=family, variant=variant, variant_run_id=variant_run_id, onnx_sha256=sha256_file(onnx_path),
        target={"name": target.name, "kind": target.kind, "device": device, "threads": threads,
                "workers": int(search.best_knobs.get("workers", cfg.workers)),
                **({"apparatus": target.apparatus_doc()} if hasattr(target, "apparatus_doc") else {})},
        load=load, search=search, lbt=lbt, accuracy=accuracy,
        latency_vs_batch=batch_ms,
        notes=[f"{len(evaluator.results)} knob settings, {cfg.point_duration_s:g} s per load point", spent, *notes],
    )
    validate_profile(doc)
    return doc


def rival_screen(evaluator: LBTEvaluator, rival: Rival, axes: Mapping[str, Sequence[Any]],
                 fixed: Mapping[str, Any]) -> SearchResult | None:
    """A later variant of a family, measured at the knobs of the family's best so far on this target: one load
    run at the rival's LBT x (1 + ``RIVAL_MARGIN``) (``lbt.challenge_rate``) says which way its LBT lies. When it
    keeps up, its LBT is searched from that rate (re-measured first, then ramped up in small steps, or searched
    below when the re-measurement fails); when it does not, below it. Either way at those knobs only, recorded as a
    one-setting search of strategy ``RIVAL_SCREEN``. None (search it in full) when the rival has no LBT or its
    knobs are not a setting of this space.

    Variants of one family share their layers' shapes and serving stack, so the knobs searched for the fastest
    serve the others too; the knob search is paid once per family and target, the LBT of each variant still
    measured."""
    knobs = dict(rival.knobs)
    in_space = set(knobs) == set(axes) | set(fixed) and \
        all(json_ready(knobs[k]) in [json_ready(v) for v in values] for k, values in axes.items()) and \
        all(json_ready(knobs[k]) == json_ready(v) for k, v in fixed.items())
    if rival.lbt_qps <= 0 or not in_space:
        return None
    rate = rival.lbt_qps * (1 + RIVAL_MARGIN)
    result = challenge_rate(evaluator.measure, knobs, evaluator.config, rate)
    if result is None:  # it kept up: how far above (re-measured first: the rate is searched below if that fails)
        upwards = dataclasses.replace(evaluator.config,
                                      ramp_factor=min(evaluator.config.ramp_factor, WINNER_RAMP_FACTOR))
        result = lbt_from_config(evaluator.measure, knobs, upwards, first_qps=rate)
        way = f"sustained {rate:g} qps at its knobs once, so its LBT was searched from there"
        screen = {"knobs": knobs, "rate_qps": rate, "passed": True, "p95_ms": None}
    else:
        first = result.points[0].measurement
        way = (f"did not sustain {first.rate_qps:g} qps at its knobs (p95 {first.p95_ms:.3g} ms), so its LBT was "
               "searched below that")
        screen = {"knobs": knobs, "rate_qps": first.rate_qps, "passed": False,
                  "p95_ms": first.p95_ms if math.isfinite(first.p95_ms) else None}
    evaluator.results[knob_key(knobs)] = result
    lbt = result.lbt_qps
    note = (f"raced against {rival.variant}, the family's best so far here (LBT {rival.lbt_qps:g} qps): it {way}, "
            f"at {rival.variant}'s searched knobs only (the knob search is run once per family and target)")
    evaluation = {"knobs": knobs, "value": lbt}
    return SearchResult(RIVAL_SCREEN, knobs, lbt, [evaluation], [evaluation], note, [screen])


def check_run_id(variant_run_id: str) -> str:
    if not isinstance(variant_run_id, str) or not RUN_ID.fullmatch(variant_run_id):
        raise ConfigError(f"variant_run_id must be an MLflow run id (32 lowercase hex digits), got {variant_run_id!r}")
    return variant_run_id


def profile_all(onnx_path: str | Path, spec: Any, targets: Sequence[HardwareTarget], *, family: str, variant: str,
                variant_run_id: str, accuracy: Mapping[str, float], cfg: ProfileConfig | None = None,
                rivals: Mapping[str, Rival] | None = None, close_targets: bool = True,
                traffic: Mapping[str, Any] | None = None) -> tuple[list[dict], dict[str, str]]:
    """(profiles, {target name: why skipped}): each available target profiled in turn (raced against
    ``rivals[target name]`` when there is one; closed afterwards unless ``close_targets`` is False; ``traffic`` as
    :func:`profile_variant` takes it); an unavailable
    target or one that raises is reported on one line and the others still run."""
    check_run_id(variant_run_id)  # a bad argument is the caller's error, not every target's
    if not Path(onnx_path).is_file():
        raise ConfigError(f"onnx_path {onnx_path} is not a file")
    available, skipped = probe_targets(targets)
    profiles = []
    for target in available:
        try:
            profiles.append(profile_variant(onnx_path, spec, target, family=family, variant=variant,
                                            variant_run_id=variant_run_id, accuracy=accuracy, cfg=cfg,
                                            rival=(rivals or {}).get(target.name), close_target=close_targets,
                                            traffic=traffic))
        except Exception as err:  # one broken target must not stop the others
            skipped[target.name] = failure_reason(err)
            log.warning("target %s failed: %s", target.name, skipped[target.name])
    return profiles, skipped


def _out_path(out: Path, name: str, many: bool) -> Path:
    return out.with_name(f"{out.stem}.{name}{out.suffix or '.json'}") if many else out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.pipeline.profiling.profile_variant",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", required=True, help="ONNX model of the variant")
    parser.add_argument("--spec", required=True, help="feature spec JSON of the model")
    parser.add_argument("--family", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--accuracy", required=True,
                        help='JSON {"auc": ..., "delta_auc": ...} of the variant (from compress_and_validate)')
    parser.add_argument("--run-id", required=True, help="MLflow run id of the variant (32 hex digits)")
    parser.add_argument("--out", default="profile.json",
                        help="profile JSON; with several targets one file per target: <stem>.<target>.json")
    parser.add_argument("--config", default=None, help="ProfileConfig as a JSON object")
    parser.add_argument("--targets", default=None,
                        help=f"comma-separated target names (default: {','.join(CLI_TARGETS)})")
    args = parser.parse_args(argv)

    def step() -> dict:
        cfg = ProfileConfig.from_dict(json_object(args.config))
        accuracy = json_object(args.accuracy, "--accuracy")
        names = [n.strip() for n in args.targets.split(",") if n.strip()] if args.targets else CLI_TARGETS
        targets, unknown = resolve_targets(names, threads=cfg.threads[0])
        if unknown:
            raise ConfigError(f"--targets: unknown target(s) {list(unknown)}; known: {', '.join(PROFILED_TARGETS)}")
        profiles, skipped = profile_all(args.onnx, args.spec, targets, family=args.family, variant=args.variant,
                                        variant_run_id=args.run_id, accuracy=accuracy, cfg=cfg)
        if not profiles:
            raise RecForgeError("no target produced a profile: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        out = Path(args.out)
        written = []
        for doc in profiles:
            path = _out_path(out, doc["target"]["name"], len(profiles) > 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc, indent=2) + "\n")
            written.append({"target": doc["target"]["name"], "path": str(path),
                            "lbt_qps": doc["latency_bounded_throughput_qps"], "lbt_capped": doc["lbt_capped"],
                            "best_knobs": doc["search"]["best_knobs"]})
        return {"profiles": written, "skipped": skipped}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
