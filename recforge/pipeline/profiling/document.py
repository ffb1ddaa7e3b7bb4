"""The profile document of one (model family, variant, hardware target): :func:`build_profile` assembles it
from the knob search and the LBT search at the best knobs; :func:`load_doc` writes its ``load`` section.

The format is ``recforge/contracts/profile_schema.json``; ``recforge.contracts.profile.validate_profile`` checks it.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from recforge.contracts.profile import PROFILE_SCHEMA_VERSION, json_ready, mean_items_per_query, validate_profile
from recforge.core.config import git_commit
from recforge.inference.loadgen import QuerySizes
from recforge.pipeline.profiling.lbt import LBTResult
from recforge.pipeline.profiling.search.base import SearchResult


def load_doc(sizes: QuerySizes, sub_batch_axis: Sequence[int]) -> dict[str, Any]:
    """The profile's ``load`` section for these query sizes and sub-batch axis."""
    if sizes.kind == "lognormal":
        doc: dict[str, Any] = {"distribution": "lognormal", "params": {"mu": sizes.params[0], "sigma": sizes.params[1]}}
    elif sizes.kind == "normal":
        doc = {"distribution": "normal", "params": {"mean": sizes.params[0], "std": sizes.params[1]}}
    elif sizes.kind == "file":
        doc = {"distribution": "empirical", "params": {"source": sizes.source},
               "mean_items_per_query": sum(sizes.values) / len(sizes.values)}
    else:  # fixed n items: an empirical distribution of one value
        n = int(sizes.params[0])
        doc = {"distribution": "empirical", "params": {"source": f"fixed:{n}"}, "mean_items_per_query": float(n)}
    if len(sub_batch_axis) == 1:
        doc["sub_batch_policy"] = {"mode": "fixed", "sub_batch": int(sub_batch_axis[0])}
    else:
        doc["sub_batch_policy"] = {"mode": "searched"}
    return doc


def build_profile(
    *,
    model_family: str,
    variant: str,
    variant_run_id: str,
    onnx_sha256: str,
    target: Mapping[str, Any],
    load: Mapping[str, Any],
    search: SearchResult,
    lbt: LBTResult,
    accuracy: Mapping[str, float],
    latency_vs_batch: Mapping[int, float] | Sequence[Mapping[str, Any]] = (),
    measured_at: dt.datetime | str | None = None,
    host: str | None = None,
    code_version: str | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The profile document of one (model, variant, target), validated against
    ``recforge/contracts/profile_schema.json``.

    ``lbt_limit`` says what ended the LBT search's way up (``lbt.LBT_LIMITS``): ``slo`` when a failing rate bounds
    it, else the LBT is a lower bound (``lbt_capped``), e.g. ``apparatus`` when the load generator's ceiling
    (``apparatus_ceiling_qps``) still met the SLO.

    ``lbt`` is the LBT search at ``search.best_knobs`` (``LBTEvaluator.result_for(best_knobs)``): its curve and
    SLO go into the document. ``target`` is {name, kind, device, threads}; ``load`` is {distribution, params,
    sub_batch_policy[, mean_items_per_query]} (arrival defaults to "poisson"). ``items_per_s`` is the achieved
    query rate at the LBT times the mean items per query. ``latency_vs_batch`` is {batch: ms} or rows
    [{batch, ms}]. ``measured_at`` defaults to now (UTC), ``host`` to this host name, ``code_version`` to the
    git commit. Raises ConfigError when the result is not a valid profile.
    """
    load_doc = {"arrival": "poisson", **json_ready(dict(load))}
    load_doc["mean_items_per_query"] = mean_items_per_query(load_doc)
    at = lbt.at_lbt
    items_per_s = at.achieved_qps * load_doc["mean_items_per_query"] if at is not None else 0.0
    if isinstance(latency_vs_batch, Mapping):
        batch_rows = [{"batch": int(b), "ms": float(ms)} for b, ms in sorted(latency_vs_batch.items())]
    else:
        batch_rows = [json_ready(dict(row)) for row in latency_vs_batch]
    if isinstance(measured_at, dt.datetime):
        measured_at = measured_at.isoformat()
    all_notes = [n for n in (*notes, search.note, lbt.note) if n]
    ceiling = lbt.config.apparatus_ceiling_qps
    if ceiling is not None and lbt.lbt_qps > 0:
        all_notes.append(f"apparatus ceiling {ceiling:,.0f} qps = {ceiling / lbt.lbt_qps:.1f}x the LBT "
                         "(the load generator against a null target)")
    doc = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "model_family": model_family,
        "variant": variant,
        "variant_run_id": variant_run_id,
        "onnx_sha256": onnx_sha256,
        "target": json_ready(dict(target)),
        "load": load_doc,
        "p95_target_ms": lbt.config.p95_target_ms,
        "slo": {"max_error_rate": lbt.config.max_error_rate, "min_achieved_ratio": lbt.config.min_achieved_ratio},
        "search": {
            "strategy": search.strategy,
            "lbt_search": lbt_search_doc(lbt),
            "evaluations": [{"knobs": json_ready(e["knobs"]), "lbt_qps": e["value"]} for e in search.evaluations],
            "trajectory": [{"knobs": json_ready(e["knobs"]), "lbt_qps": e["value"]} for e in search.trajectory],
            "best_knobs": json_ready(search.best_knobs),
        },
        "latency_bounded_throughput_qps": lbt.lbt_qps,
        "lbt_capped": lbt.capped,  # a lower bound: what ended the ramp was not the SLO (lbt_limit)
        "lbt_limit": lbt.limit,
        "items_per_s": items_per_s,
        "curve": lbt.curve(),
        "latency_vs_batch": batch_rows,
        "accuracy": json_ready(dict(accuracy)),
        "measured_at": measured_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": host or socket.gethostname(),
        "code_version": code_version or git_commit(),
        "notes": all_notes,
    }
    if ceiling is not None:
        doc["apparatus_ceiling_qps"] = ceiling
    validate_profile(doc)
    return doc


def lbt_search_doc(lbt: LBTResult) -> dict[str, Any]:
    """The profile's ``search.lbt_search``: the LBT search's bounds (the SLO and the apparatus ceiling have their
    own fields; a bound that is not set is left out)."""
    return {k: v for k, v in lbt.config.to_dict().items()
            if k not in ("p95_target_ms", "max_error_rate", "min_achieved_ratio", "apparatus_ceiling_qps")
            and v is not None}
