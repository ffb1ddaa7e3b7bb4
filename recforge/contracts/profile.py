"""The profile document: what profiling measured for one (model family, variant, hardware target).

The schema is ``profile_schema.json`` beside this module (JSON Schema draft 2020-12). The profiling stage writes
profile documents (``recforge.pipeline.profiling.document.build_profile``); registration, the model-repository
generator, the fleet and the Kubernetes generator read them. :func:`validate_profile` is the one check all of them
use.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recforge.core.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("profile_schema.json")
PROFILE_SCHEMA_VERSION = 1


@functools.cache
def profile_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a profile document, ``recforge/contracts/profile_schema.json``."""
    return json.loads(SCHEMA_PATH.read_text())


def _json_path(path: Sequence[Any]) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validate_profile(doc: Any) -> None:
    """ConfigError naming the JSON path (``$.target.threads``) of the first problem unless ``doc`` is a valid
    profile: the schema, a parseable ``measured_at`` and ordered percentiles (p50 <= p95 <= p99) in the curve."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(profile_schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (_json_path(e.absolute_path), e.message))
    if errors:
        first = errors[0]
        path = _json_path(first.absolute_path)
        message = first.message
        if first.validator == "required" and isinstance(first.instance, dict):
            missing = [k for k in first.validator_value if k not in first.instance]
            if missing:
                path, message = f"{path}.{missing[0]}", "required property is missing"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"invalid profile at {path}: {message}{more}")
    bad = _first_non_finite(doc, ())
    if bad is not None:
        raise ConfigError(f"invalid profile at {_json_path(bad[0])}: {bad[1]} is not a finite number (JSON has no "
                          "NaN or infinity)")
    try:
        dt.datetime.fromisoformat(doc["measured_at"])
    except ValueError:
        raise ConfigError(f"invalid profile at $.measured_at: {doc['measured_at']!r} is not an ISO 8601 time") from None
    for i, row in enumerate(doc["curve"]):
        percentiles = (row["p50_ms"], row["p95_ms"], row["p99_ms"])
        if None not in percentiles and not percentiles[0] <= percentiles[1] <= percentiles[2]:
            raise ConfigError(f"invalid profile at $.curve[{i}]: percentiles must satisfy p50 <= p95 <= p99, got "
                              f"{row['p50_ms']}, {row['p95_ms']}, {row['p99_ms']}")


def _first_non_finite(value: Any, path: tuple) -> tuple[tuple, float] | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, (*path, key))
        if found is not None:
            return found
    return None


def json_ready(value: Any) -> Any:
    """JSON-ready copy: tuples -> lists, numpy scalars -> Python numbers, dict keys -> str."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str | bytes):
        return value.item()  # numpy scalar
    return value


def mean_items_per_query(load: Mapping[str, Any]) -> float:
    """Mean items of a query under the load model: exp(mu + sigma^2 / 2) for lognormal, mean for normal, or the
    explicit ``mean_items_per_query`` (needed for empirical sizes)."""
    if load.get("mean_items_per_query") is not None:
        return float(load["mean_items_per_query"])
    distribution, params = load.get("distribution"), load.get("params") or {}
    try:
        if distribution == "lognormal":
            return math.exp(params["mu"] + params["sigma"] ** 2 / 2)
        if distribution == "normal":
            return float(params["mean"])
    except (KeyError, TypeError):
        raise ConfigError(f"load params {params!r} do not fit distribution {distribution!r}") from None
    raise ConfigError(f"load distribution {distribution!r} needs an explicit mean_items_per_query")


def read_profile(path: str | Path | None) -> dict[str, Any] | None:
    """The profile document at ``path`` (None without one); a one-line ConfigError when it is not JSON."""
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"profile {path} cannot be read as JSON: {err}") from None
