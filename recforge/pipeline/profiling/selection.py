"""Which validated variants the stage profiles: the accuracy/latency Pareto front, fastest first, plus the fp32
reference; GPU-only precisions only where a GPU target is available."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.pipeline.profiling.stage_config import ProfileStageConfig

REFERENCE_VARIANT = "fp32"


def precision_of(variant: str) -> str:
    """"pruned50+int8_static" -> "int8_static"; a base without a suffix is fp32."""
    return variant.split("+", 1)[1] if "+" in variant else REFERENCE_VARIANT


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not a bool, not None, not NaN)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(rows: Sequence[Mapping[str, Any]], cost: str, gain: str) -> list[Mapping[str, Any]]:
    """The rows no other row dominates (``cost`` no higher and ``gain`` no lower, one of them strictly), sorted by
    ``cost`` ascending (for equal cost and gain, the first row is kept). Rows missing either value are left out."""
    usable = [r for r in rows if is_finite(r.get(cost)) and is_finite(r.get(gain))]
    ordered = sorted(enumerate(usable), key=lambda ir: (ir[1][cost], -ir[1][gain], ir[0]))
    front, best_gain = [], -math.inf
    for _, row in ordered:
        if row[gain] > best_gain:  # strictly better than everything cheaper (or as cheap)
            front.append(row)
            best_gain = row[gain]
    return front


def select_variants(rows: Sequence[Mapping[str, Any]], cfg: ProfileStageConfig, *, gpu_available: bool = False
                    ) -> list[tuple[dict, str]]:
    """[(row, why)] of the passing variants to profile: the AUC / ``latency_ms_b256`` Pareto front, fastest first,
    at most ``max_variants_per_family``, then the fp32 reference when it is not among them. Rows are
    {"name", "passed", "auc", "latency_ms_b256", ...}; a passing variant without a latency is never on the front."""
    passed = [dict(r) for r in rows if r.get("passed", True)]
    eligible = [r for r in passed
                if gpu_available or precision_of(r["name"]) not in cfg.gpu_only_precisions]
    front = pareto_front(eligible, "latency_ms_b256", "auc")
    chosen = [(r, f"Pareto front #{i + 1} of {len(front)} (AUC vs ORT ms at batch 256)")
              for i, r in enumerate(front[: cfg.max_variants_per_family])]
    if cfg.include_reference and all(r["name"] != REFERENCE_VARIANT for r, _ in chosen):
        reference = next((r for r in passed if r["name"] == REFERENCE_VARIANT), None)
        if reference is not None:
            chosen.append((reference, "fp32 reference"))
    return chosen
