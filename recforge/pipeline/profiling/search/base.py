"""The knob-search interface: :class:`SearchStrategy`, its :class:`SearchResult`, and what strategies share
(axes checking, canonical knob keys, memoised evaluation).

A strategy knows the space, not the measuring: ``evaluate(knobs)`` is injected (the profiling stage passes an
``LBTEvaluator``, tests pass closed-form surfaces).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from recforge.contracts.profile import json_ready
from recforge.core.errors import ConfigError

Evaluate = Callable[[dict], float]
"""evaluate(knobs) -> the knob setting's latency-bounded throughput (higher is better)."""

Valid = Callable[[dict], bool]
"""valid(knobs) -> whether the knob setting can be served at all (e.g. preferred batch sizes <= max_batch_size);
searches never evaluate an invalid one."""


def knob_key(knobs: Mapping[str, Any]) -> str:
    """A canonical, hashable key of a knob setting (lists and tuples alike; key order does not matter)."""
    return json.dumps(json_ready(dict(knobs)), sort_keys=True)


@dataclass
class SearchResult:
    """Outcome of a :class:`SearchStrategy`: the best knobs, every distinct evaluation, the path taken."""

    strategy: str
    best_knobs: dict
    best_value: float
    evaluations: list[dict] = field(default_factory=list)  # [{"knobs": ..., "value": ...}] in evaluation order
    trajectory: list[dict] = field(default_factory=list)  # [{"knobs": ..., "value": ...}]: the points moved to
    note: str = ""
    # cheap one-run probes that decided without a full evaluation (RacingCoordinateSearch):
    # [{"knobs": ..., "rate_qps": ..., "passed": ..., "p95_ms": ...}] in probing order
    screens: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_ready(dataclasses.asdict(self))


@runtime_checkable
class SearchStrategy(Protocol):
    """A search over serving knobs; ``evaluate(knobs)`` returns the latency-bounded throughput (higher is
    better). Like Triton model_analyzer's config generators, strategies know the space, not the measuring."""

    name: str  # the profile's search.strategy

    def search(self, evaluate: Evaluate) -> SearchResult: ...


def check_axes(axes: Mapping[str, Sequence[Any]]) -> dict[str, tuple]:
    """The axes as {name: tuple of values}; ConfigError unless each is a non-empty sequence of distinct values."""
    if not isinstance(axes, Mapping) or not axes:
        raise ConfigError(f"axes must be a non-empty mapping of knob name -> ordered values, got {axes!r}")
    out = {}
    for name, values in axes.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"axis names must be non-empty strings, got {name!r}")
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"axis {name!r} must be a non-empty list of values, got {values!r}")
        keys = [knob_key({"v": v}) for v in values]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"axis {name!r} has repeated values: {list(values)}")
        out[name] = tuple(values)
    return out


def check_fixed(strategy: str, axes: Mapping[str, Any], fixed: Mapping[str, Any] | None) -> dict:
    """``fixed`` as a dict; ConfigError when a knob is both fixed and searched."""
    fixed = dict(fixed or {})
    overlap = sorted(set(fixed) & set(axes))
    if overlap:
        raise ConfigError(f"{strategy}: knobs {overlap} are both fixed and searched")
    return fixed


class EvaluationMemo:
    """evaluate() once per distinct point of the grid of axis indices; the log of evaluations in order."""

    def __init__(self, evaluate: Evaluate, axes: dict[str, tuple], fixed: dict):
        self.evaluate, self.axes, self.fixed = evaluate, axes, fixed
        self.values: dict[tuple[int, ...], float] = {}
        self.log: list[dict] = []

    def knobs(self, point: tuple[int, ...]) -> dict:
        knobs = dict(self.fixed)
        knobs.update({name: values[i] for (name, values), i in zip(self.axes.items(), point, strict=True)})
        return knobs

    def __call__(self, point: tuple[int, ...]) -> float:
        if point not in self.values:
            knobs = self.knobs(point)
            value = self.evaluate(dict(knobs))
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"evaluate({knobs}) returned {value!r}; it must return a finite number")
            self.values[point] = float(value)
            self.log.append({"knobs": knobs, "value": float(value)})
        return self.values[point]

    def entry(self, point: tuple[int, ...]) -> dict:
        return {"knobs": self.knobs(point), "value": self.values[point]}


def start_point(strategy: str, axes: dict[str, tuple], start: Mapping[str, Any] | None) -> tuple[int, ...]:
    """``start`` ({knob: value}) as axis indices; an axis it does not name starts at its first value. ConfigError
    for a knob that is not an axis or a value that is not on its axis."""
    start = dict(start or {})
    unknown = sorted(set(start) - set(axes))
    if unknown:
        raise ConfigError(f"{strategy}: start has knobs {unknown} that are not axes {sorted(axes)}")
    point = []
    for name, values in axes.items():
        if name not in start:
            point.append(0)
            continue
        keys = [knob_key({"v": v}) for v in values]
        try:
            point.append(keys.index(knob_key({"v": start[name]})))
        except ValueError:
            raise ConfigError(f"{strategy}: start {name}={start[name]!r} is not on its axis {list(values)}") from None
    return tuple(point)
