"""The Triton serving settings of one model (:class:`ServingConfig`) and the ones a profile document argues for
(:func:`serving_config_from_profile`): batching, queue bound, instances, threads, warm-up, each with the
measurement it came from. ``recforge.inference.model_repo`` writes them into config.pbtxt.

A deployed model has two batching knob sets (:func:`batching_knob_sets`), one per :data:`BATCHING_MODES`: the
throughput-optimal one is the config the fleet deploys (the profile's best knobs), the latency-optimal one is derived
from it (:func:`latency_optimal`); the fleet switches a live node between them (recforge.serving.fleet.batching).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from recforge.contracts.profile import validate_profile
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError

INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
# a node's batching mode (DeepRecSched): the knob set for a light load or the one for a heavy load
LATENCY_MODE, THROUGHPUT_MODE = "latency", "throughput"
BATCHING_MODES = (LATENCY_MODE, THROUGHPUT_MODE)
MAX_BATCH_SIZE = 1 << 16

BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
PerInstance = Annotated[int, Field(ge=1, le=64)]


@typed_config
class ServingConfig:
    """The Triton serving settings of one model (the DeepRecSched / Triton search result).

    ``sources`` maps a field name to the measurement it came from; it becomes the comment of that value in
    config.pbtxt (fields without a source are marked as defaults)."""

    max_batch_size: BatchSize = 256
    preferred_batch_size: tuple[BatchSize, ...] = ()  # empty: no preference, dispatch what has arrived
    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=10**7)] = 100
    # requests waiting in the node's queue beyond which Triton rejects a new one at once (HTTP 503, which the
    # balancer retries on another node: it never ran); 0: no bound (Triton's default)
    max_queue_size: Annotated[int, Field(ge=0, le=10**6)] = 0
    instance_count: PerInstance = 1
    # False: no dynamic_batching block at all (Triton's default: each request runs on its own, as it arrives);
    # preferred_batch_size must then be empty and max_queue_delay_microseconds is not written
    dynamic_batching: bool = True
    instance_kind: Literal[INSTANCE_KINDS] = "KIND_CPU"
    threads_per_instance: PerInstance = 1  # intra-op threads of each instance (onnxruntime or torch)
    warmup_batch_sizes: tuple[BatchSize, ...] = (1,)
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("preferred_batch_size", "warmup_batch_sizes"):
            sizes = getattr(self, key)
            if any(s > self.max_batch_size for s in sizes) or len(set(sizes)) != len(sizes):
                raise ConfigError(f"ServingConfig.{key} must be distinct integers in [1, max_batch_size "
                                  f"{self.max_batch_size}], got {sizes!r}")
        if not self.dynamic_batching and self.preferred_batch_size:
            raise ConfigError(f"ServingConfig.preferred_batch_size {self.preferred_batch_size!r} needs "
                              "dynamic_batching; set dynamic_batching true or leave preferred_batch_size empty")
        unknown = sorted(set(self.sources) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"ServingConfig.sources names unknown fields {unknown}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ServingConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sources"] = dict(self.sources)
        for key in ("preferred_batch_size", "warmup_batch_sizes"):
            out[key] = list(out[key])
        return out

    def source(self, key: str) -> str:
        return self.sources.get(key) or "default (not measured)"


# --------------------------------------------------------------------------------------------------------------
# From a profile


def serving_config_from_profile(profile: Mapping[str, Any] | str | Path, *, source: str | None = None,
                                max_batch_size: int | None = None) -> ServingConfig:
    """The serving config a profile document (``recforge/contracts/profile_schema.json``; a dict or a JSON file)
    argues for.

    * ``max_batch_size``: the one the profile ran with (``search.best_knobs.max_batch_size``, cpu-triton), else the
      largest request the client sends (``sub_batch``) or the largest preferred batch, whichever is larger
      (the ``max_batch_size`` argument overrides);
    * ``preferred_batch_size`` / ``max_queue_delay_microseconds`` / ``instance_count``: the Triton knobs of
      ``search.best_knobs`` (a cpu-triton profile); otherwise the workers of the profiled target become the
      instance count, with no preferred size and the default queue delay;
    * ``max_queue_size``: none (0), with the reason in ``sources`` (see below);
    * ``threads_per_instance``: ``target.threads``;
    * ``warmup_batch_sizes``: 1 and max_batch_size.
    Each value's ``sources`` entry names the profile (file or run id), its LBT figure and the evaluation."""
    if not isinstance(profile, Mapping):
        path = Path(profile)
        try:
            profile = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"profile {path} cannot be read as JSON: {err}") from None
        source = source or str(path)
    validate_profile(profile)
    knobs = dict(profile["search"]["best_knobs"])
    target = profile["target"]
    lbt = profile["latency_bounded_throughput_qps"]
    where = (f"profile {source + ' ' if source else ''}(variant run {profile['variant_run_id']}, "
             f"{profile['model_family']}/{profile['variant']} on {target['name']} [{target['kind']}], "
             f"measured {profile['measured_at']})")
    lbt_text = (f"LBT {lbt:g} qps{' (capped)' if profile.get('lbt_capped') else ''} at p95 <= "
                f"{profile['p95_target_ms']:g} ms, best of {len(profile['search']['evaluations'])} knob settings "
                f"({profile['search']['strategy']})")
    sources: dict[str, str] = {}

    def knob(name: str) -> str:
        return f"search.best_knobs.{name}={json.dumps(knobs[name])} of {where}: {lbt_text}"

    preferred = tuple(sorted(int(b) for b in knobs.get("preferred_batch", ())))
    if "preferred_batch" in knobs:
        sources["preferred_batch_size"] = knob("preferred_batch")
    sub_batch = int(knobs.get("sub_batch", 0))
    if max_batch_size is None and "max_batch_size" in knobs:  # a cpu-triton profile measured with this one
        max_batch_size = int(knobs["max_batch_size"])
        sources["max_batch_size"] = knob("max_batch_size") + " (the Triton max_batch_size the search ran with)"
    elif max_batch_size is None:
        candidates = [b for b in (sub_batch, *preferred) if b]
        if not candidates:
            raise ConfigError(f"{where} has neither sub_batch nor preferred_batch in search.best_knobs; pass "
                              "max_batch_size")
        max_batch_size = max(candidates)
        sources["max_batch_size"] = (knob("sub_batch") if max_batch_size == sub_batch
                                     else knob("preferred_batch")) + " (largest request)"
    else:
        sources["max_batch_size"] = f"given explicitly (profile {where} suggested {max(sub_batch, *preferred, 1)})"
    queue_delay = 100
    if "queue_delay_us" in knobs:
        queue_delay = int(knobs["queue_delay_us"])
        sources["max_queue_delay_microseconds"] = knob("queue_delay_us")
    if "instances" in knobs:
        instances = int(knobs["instances"])
        sources["instance_count"] = knob("instances")
    elif "workers" in knobs or "workers" in target:
        instances = int(knobs.get("workers", target.get("workers", 1)))
        sources["instance_count"] = (f"{'search.best_knobs' if 'workers' in knobs else 'target'}.workers="
                                     f"{instances} (parallel sessions) of {where}: {lbt_text}")
    else:
        instances = 1
    threads = int(knobs.get("threads", target["threads"]))
    sources["threads_per_instance"] = f"target.threads={threads} of {where}: {lbt_text}"
    batch_ms = {row["batch"]: row["ms"] for row in profile.get("latency_vs_batch", [])}
    warmup = tuple(sorted({1, max_batch_size}))
    measured = ", ".join(f"{b}: {batch_ms[b]:.3g} ms" for b in warmup if b in batch_ms)
    sources["warmup_batch_sizes"] = "1 and max_batch_size" + (f" (single-request latency_vs_batch {measured})"
                                                               if measured else "")
    # no node-level queue bound (Triton's max_queue_size): on this build's python backend any bound cut the node's
    # capacity, even far below it. One DLRM node on its own CPU (make bench-fleet, 2026-11-27): with a bound of 12
    # (every queued request counted as a full batch) its LBT was 750 q/s, with 78 (the requests the client really
    # sends) 744-1,053 q/s and 20 % of the queries unanswered at 800 q/s; without one it served 1,400 q/s through
    # the balancer and 1,800 q/s straight (p95 4.5-12.9 ms). Queue waits are bounded where a request can still go
    # elsewhere: at the balancer (load shedding, docs/elastic.md). ServingConfig(max_queue_size=...) sets one.
    sources["max_queue_size"] = ("none: a node-level bound cut the LBT of a DLRM node from 1,400 to 744-1,053 q/s "
                                 "(recforge.inference.serving_config, measured 2026-11-27)")
    # a GPU profile's instances run on the GPU; a hybrid profile's Triton side is its CPU part (the offloaded
    # queries need a second, GPU deployment, which the hybrid profile's gpu_threshold routes to)
    kind = "KIND_GPU" if target["kind"].startswith("gpu-") else "KIND_CPU"
    sources["instance_kind"] = f"target.kind={target['kind']} of {where}"
    return ServingConfig(max_batch_size=max_batch_size, preferred_batch_size=preferred,
                         max_queue_delay_microseconds=queue_delay,
                         instance_count=instances, instance_kind=kind,
                         threads_per_instance=threads, warmup_batch_sizes=warmup, sources=sources)


# --------------------------------------------------------------------------------------------------------------
# The two batching knob sets


def latency_optimal(config: ServingConfig, profile: Mapping[str, Any] | None = None) -> ServingConfig:
    """The latency-optimal knob set of a model deployed with ``config`` (its throughput-optimal one): the same
    config with no wait for a batch — ``max_queue_delay_microseconds`` 0 and no ``preferred_batch_size`` —, so an
    instance takes a request as soon as it is free, batched only with what has queued by then (at a light load: alone;
    DeepRecSched's latency-optimal end). Everything else stays: instances, threads, max_batch_size, the queue bound,
    warm-up, so the node's memory and CPU use are the same in both modes and only the batching wait moves.

    When the ``profile``'s search evaluated exactly that setting (its ``best_knobs`` with ``queue_delay_us`` 0 and
    ``preferred_batch`` []), the evaluation's LBT is named as its measurement in ``sources``; otherwise the sources
    say the two values are derived, not measured. A config without dynamic batching has no wait to remove: it is
    returned as it is (both modes are the same)."""
    if not config.dynamic_batching:
        return config
    why = "latency-optimal: no batching wait (derived from the throughput-optimal knobs, not measured on its own)"
    search = (profile or {}).get("search") or {}
    best = search.get("best_knobs")
    if best is not None:
        wanted = comparable_knobs({**best, "queue_delay_us": 0, "preferred_batch": []})
        measured = [e for e in search.get("evaluations") or () if comparable_knobs(e.get("knobs") or {}) == wanted]
        if measured:
            why = (f"latency-optimal: no batching wait; the profile's search measured this setting (best_knobs with "
                   f"queue_delay_us=0, preferred_batch=[]) at LBT {measured[0]['lbt_qps']:g} qps")
    sources = {**config.sources, "max_queue_delay_microseconds": why, "preferred_batch_size": why}
    return dataclasses.replace(config, max_queue_delay_microseconds=0, preferred_batch_size=(), sources=sources)


def comparable_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """A profile's knob setting with its preferred batch sizes in ascending order (the order means nothing)."""
    return {**knobs, "preferred_batch": sorted(int(b) for b in knobs.get("preferred_batch") or ())}


def batching_knob_sets(deployed: ServingConfig, profile: Mapping[str, Any] | None = None) -> dict[str, ServingConfig]:
    """{mode: knob set} of a model deployed with ``deployed``: the throughput-optimal set is ``deployed`` itself (the
    profile's best knobs, as the fleet deploys them), the latency-optimal one :func:`latency_optimal`."""
    return {THROUGHPUT_MODE: deployed, LATENCY_MODE: latency_optimal(deployed, profile)}


__all__ = ["BATCHING_MODES", "INSTANCE_KINDS", "LATENCY_MODE", "MAX_BATCH_SIZE", "ServingConfig", "THROUGHPUT_MODE",
           "batching_knob_sets", "latency_optimal", "serving_config_from_profile"]
