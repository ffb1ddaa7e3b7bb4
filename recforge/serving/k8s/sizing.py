"""Sizing one Triton fleet from its profile document: CPU and memory per replica, replica bounds, the HPA's
queue-time target, and why (``basis``)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.contracts.profile import validate_profile
from recforge.core.errors import ConfigError
from recforge.inference.model_repo import serving_config_from_profile
from recforge.serving.k8s.deploy_config import DeployConfig, FleetEntry, StorageConfig, TritonConfig


@dataclass(frozen=True)
class FleetSizing:
    """What the manifests of one fleet take from its profile, and why (``basis``)."""

    name: str  # Kubernetes name of the fleet's objects
    model_family: str
    model_name: str
    variant: str
    target_name: str
    target_kind: str
    gpu: bool
    instances: int  # Triton instance_group count (best knobs)
    threads: int  # intra-op threads per instance (profile target)
    cpu_millis: int
    memory_mib: int
    lbt_qps: float
    p95_slo_ms: float
    min_replicas: int
    max_replicas: int
    queue_time_target_us: int
    items_target_per_s: int  # the HPA's items/s per pod: the profile's items/s at LBT x the law's utilisation
    model_repository: str
    onnx_sha256: str
    variant_run_id: str
    basis: dict


def dns_name(*parts: str) -> str:
    name = "-".join(re.sub(r"[^a-z0-9-]+", "-", p.lower()) for p in parts)
    name = re.sub(r"-+", "-", name).strip("-")
    if len(name) > 63:
        raise ConfigError(f"object name {name!r} is longer than 63 characters; use shorter family/target names")
    return name


def serving_knobs(profile: Mapping[str, Any], source: str) -> tuple[int, int]:
    """(Triton instances, intra-op threads per instance) the profile argues for: the same derivation as the
    fleet's config.pbtxt (``recforge.inference.model_repo.serving_config_from_profile``), so pods get the cores their
    instances use."""

    serving = serving_config_from_profile(profile, source=source)
    return serving.instance_count, serving.threads_per_instance


def model_repository_uri(storage: StorageConfig, triton: TritonConfig, family: str, target: str) -> str:
    """Triton's S3 path of a fleet's repository: ``s3://[https://host:port/]bucket/prefix/family/target``."""
    path = "/".join(p.strip("/") for p in (triton.model_bucket, triton.model_prefix, family, target) if p)
    return f"s3://{storage.s3_endpoint}/{path}" if storage.s3_endpoint else f"s3://{path}"


def fleet_sizing(profile: Mapping[str, Any], entry: FleetEntry, cfg: DeployConfig) -> FleetSizing:
    """Size one Triton fleet from its (validated) profile document and expected traffic."""
    validate_profile(profile)
    family, target = profile["model_family"], profile["target"]
    lbt = float(profile["latency_bounded_throughput_qps"])
    where = f"profile {entry.profile} ({family}/{profile['variant']} on {target['name']})"
    if lbt <= 0:
        raise ConfigError(f"{where} met the SLO at no offered rate (LBT 0): re-profile it or drop this fleet")
    slo = cfg.p95_slo_ms or float(profile["p95_target_ms"])
    if profile["p95_target_ms"] > slo:
        raise ConfigError(f"{where} was measured against p95 <= {profile['p95_target_ms']} ms, looser than the "
                          f"deployment SLO {slo} ms: re-profile with the SLO's p95 target")
    instances, threads = serving_knobs(profile, entry.profile)
    t = cfg.triton
    per_replica_qps = lbt * t.target_utilization
    needed_at_peak = math.ceil(entry.peak_qps / per_replica_qps)
    min_replicas = max(t.min_replicas, math.ceil(entry.base_qps / per_replica_qps))
    max_replicas = max(min_replicas, needed_at_peak)
    if max_replicas > t.max_replicas_cap:
        raise ConfigError(f"{where}: peak {entry.peak_qps} qps needs {max_replicas} replicas at "
                          f"{per_replica_qps:.1f} qps each, over max_replicas_cap {t.max_replicas_cap}; raise the "
                          "cap or serve a faster variant/target")
    cpu_millis = math.ceil((instances * threads + t.server_cpu) * 1000)
    memory_mib = t.memory_base_mib + instances * t.memory_per_instance_mib
    return FleetSizing(
        name=dns_name("triton", family, target["name"]),
        model_family=family,
        model_name=entry.model_name or family,
        variant=profile["variant"],
        target_name=target["name"],
        target_kind=target["kind"],
        gpu=target["kind"].startswith("gpu-"),
        instances=instances,
        threads=threads,
        cpu_millis=cpu_millis,
        memory_mib=memory_mib,
        lbt_qps=lbt,
        p95_slo_ms=slo,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        queue_time_target_us=round(t.queue_time_fraction * slo * 1000),
        items_target_per_s=max(1, round(float(profile["items_per_s"]) * cfg.control.target_utilisation)),
        model_repository=model_repository_uri(cfg.storage, t, family, target["name"]),
        onnx_sha256=profile["onnx_sha256"],
        variant_run_id=profile["variant_run_id"],
        basis={
            "profile": entry.profile,
            "measured_at": profile["measured_at"],
            "code_version": profile["code_version"],
            "cpu": f"({instances} instances x {threads} threads + {t.server_cpu} frontend) cores",
            "replicas": f"per replica {lbt:g} qps LBT x {t.target_utilization} utilization = "
                        f"{per_replica_qps:.1f} qps; base {entry.base_qps:g} qps, peak {entry.peak_qps:g} qps",
            "hpa": f"items/s per pod {float(profile['items_per_s']):.0f} at LBT x the control law's utilisation "
                   f"{cfg.control.target_utilisation}; average queue time {t.queue_time_fraction} x p95 SLO "
                   f"{slo:g} ms; behavior from the control law (fleet.hpa_behavior)",
        },
    )


def load_profile(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read profile {path}: {err}") from None


def size_fleets(cfg: DeployConfig) -> list[FleetSizing]:
    sizings = []
    for entry in cfg.fleets:
        sizings.append(fleet_sizing(load_profile(Path(cfg.base_dir) / entry.profile), entry, cfg))
    names = [s.name for s in sizings]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"two fleets map to the same (family, target) {dup}: deploy one variant per target")
    return sizings
