"""The traffic profile: what the fleet served over a window (arrival-rate curve, peak and mean rate, query-size
histogram and a seeded sample of query sizes), the document the serving side records
(``recforge.serving.elastic.traffic``) and the nightly profiling reads as its load
(``recforge.pipeline.profiling.served_traffic``).

A traffic profile is one JSON object (``recforge-traffic`` version 1), logged as the artifact
:data:`ARTIFACT_PATH` of a run in the MLflow experiment :func:`traffic_experiment`::

    {"format": "recforge-traffic", "version": 1,
     "recorded_from": "2026-11-26T08:00:00+00:00", "recorded_to": "2026-11-26T20:00:00+00:00",
     "requests": 41210, "peak_qps": 12.4, "peak_window_s": 10.0, "mean_qps": 0.95,
     "interval_s": 1.0, "rate_qps": [0.0, 2.0, ...],     # mean arrival rate of each interval, queries/s
     "sizes": {"edges": [1, 8, ..., 1025], "counts": [...]},  # items per query, bins [edge_i, edge_i+1)
     "size_sample": [212, 87, ...],                     # up to MAX_SAMPLE item counts, a seeded subsample
     "source": "balancer request log /…/haproxy.log",
     "nodes": {"node0": {"requests": 20400, "p95_ms": 11.2, "peak_qps": 7.1, "peak_p95_ms": 14.0,   # optional
                         "predicted_peak_p95_ms": 12.5, "peak_p95_vs_predicted": 1.12}, ...}}

``peak_qps`` is the highest mean arrival rate over any ``peak_window_s`` window (10 s: a 1-s peak of Poisson
arrivals mostly measures noise). ``nodes`` (optional) is each node's share of it as the balancer saw it: answered
requests, their p95 over the window, the node's busiest ``peak_window_s`` (its rate and p95) and, where the fleet
had a profile, the p95 that profile predicts at that rate and query mix and the ratio of the two.
:func:`load_traffic` / :func:`traffic_from_dict` reject a missing, empty, corrupt or
inconsistent document with one line naming the file and field; :func:`write_size_sample` writes the sample as the
sizes file the load generator replays (``QuerySizes.parse`` takes the path of such a file).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recforge.core.errors import DataError, first_line
from recforge.core.json_document import read_json_document

TRAFFIC_FORMAT = "recforge-traffic"
TRAFFIC_VERSION = 1
EXPERIMENT = "recforge-traffic"  # default MLflow experiment of the recorded traffic profiles
EXPERIMENT_ENV = "RECFORGE_TRAFFIC_EXPERIMENT"
ARTIFACT_DIR = "traffic"
ARTIFACT_PATH = f"{ARTIFACT_DIR}/traffic.json"
MAX_SAMPLE = 5000
MAX_ITEMS = 1024  # the load generator's largest query
# Query-size bins in items, [edge_i, edge_i+1): 1025 closes the last bin at 1024 items (the traces' bins too)
SIZE_EDGES = (1, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512, 768, 1025)
PEAK_WINDOW_S = 10.0
CHECK_SOURCE = "traffic profile"
REQUIRED = ("recorded_from", "recorded_to", "requests", "peak_qps", "peak_window_s", "mean_qps", "interval_s",
            "rate_qps", "sizes", "size_sample", "source")


def traffic_experiment() -> str:
    """The MLflow experiment of the traffic profiles (``RECFORGE_TRAFFIC_EXPERIMENT``, default ``recforge-traffic``)."""
    return os.environ.get(EXPERIMENT_ENV, EXPERIMENT)


@dataclass(frozen=True)
class TrafficProfile:
    """What the fleet served from ``recorded_from`` to ``recorded_to`` (see the module docstring)."""

    recorded_from: str
    recorded_to: str
    requests: int
    peak_qps: float
    peak_window_s: float
    mean_qps: float
    interval_s: float
    rate_qps: tuple[float, ...]
    size_edges: tuple[int, ...]
    size_counts: tuple[int, ...]
    size_sample: tuple[int, ...]
    source: str
    nodes: dict[str, dict[str, float]] | None = None  # per node: what it served against its profile (optional)

    def __post_init__(self) -> None:
        check_traffic(self, CHECK_SOURCE)

    @property
    def mean_items_per_query(self) -> float:
        """Mean items per query of the sample (what the load generator replays)."""
        return sum(self.size_sample) / len(self.size_sample)

    def recorded_to_time(self) -> dt.datetime:
        return parse_time(self.recorded_to, "recorded_to", "traffic profile")

    def to_dict(self) -> dict[str, Any]:
        return {"format": TRAFFIC_FORMAT, "version": TRAFFIC_VERSION, "recorded_from": self.recorded_from,
                "recorded_to": self.recorded_to, "requests": self.requests, "peak_qps": round(self.peak_qps, 4),
                "peak_window_s": self.peak_window_s, "mean_qps": round(self.mean_qps, 4),
                "interval_s": self.interval_s, "rate_qps": [round(r, 4) for r in self.rate_qps],
                "sizes": {"edges": list(self.size_edges), "counts": list(self.size_counts)},
                "size_sample": list(self.size_sample), "source": self.source,
                **({"nodes": self.nodes} if self.nodes is not None else {})}


def parse_time(text: Any, name: str, source: str) -> dt.datetime:
    """An ISO 8601 time with a UTC offset; DataError naming ``name`` otherwise."""
    try:
        value = dt.datetime.fromisoformat(str(text))
    except ValueError:
        raise DataError(f"{source}: {name} {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise DataError(f"{source}: {name} {text!r} has no UTC offset (write e.g. 2026-11-26T08:00:00+00:00)")
    return value


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_traffic(profile: TrafficProfile, source: str) -> None:
    """DataError naming the field of the first inconsistency of ``profile``."""
    start = parse_time(profile.recorded_from, "recorded_from", source)
    end = parse_time(profile.recorded_to, "recorded_to", source)
    if end < start:
        raise DataError(f"{source}: recorded_to {profile.recorded_to} is before recorded_from {profile.recorded_from}")
    if isinstance(profile.requests, bool) or not isinstance(profile.requests, int) or profile.requests < 1:
        raise DataError(f"{source}: requests must be an integer >= 1 (an empty recording is no traffic profile), "
                        f"got {profile.requests!r}")
    for name in ("interval_s", "peak_window_s"):
        if not _finite(getattr(profile, name)) or getattr(profile, name) <= 0:
            raise DataError(f"{source}: {name} must be a number > 0, got {getattr(profile, name)!r}")
    if not profile.rate_qps or not all(_finite(r) and r >= 0 for r in profile.rate_qps):
        raise DataError(f"{source}: rate_qps must be a non-empty list of finite rates >= 0")
    for name in ("mean_qps", "peak_qps"):
        if not _finite(getattr(profile, name)) or getattr(profile, name) < 0:
            raise DataError(f"{source}: {name} must be a finite rate >= 0, got {getattr(profile, name)!r}")
    if profile.peak_qps < profile.mean_qps * (1 - 1e-6):
        raise DataError(f"{source}: peak_qps {profile.peak_qps} is below mean_qps {profile.mean_qps}")
    edges, counts = profile.size_edges, profile.size_counts
    if len(edges) < 2 or any(not isinstance(e, int) or isinstance(e, bool) for e in edges) or edges[0] < 1 \
            or edges[-1] > MAX_ITEMS + 1 or list(edges) != sorted(set(edges)):
        raise DataError(f"{source}: sizes.edges must be >= 2 increasing item counts in [1, {MAX_ITEMS + 1}]")
    if len(counts) != len(edges) - 1 or any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in counts):
        raise DataError(f"{source}: sizes.counts must be {len(edges) - 1} integers >= 0 (one per bin of sizes.edges)")
    if sum(counts) != profile.requests:
        raise DataError(f"{source}: sizes.counts sum to {sum(counts)} but requests is {profile.requests}")
    sample = profile.size_sample
    if not sample or len(sample) > min(MAX_SAMPLE, profile.requests):
        raise DataError(f"{source}: size_sample must hold 1 to min({MAX_SAMPLE}, requests) item counts, "
                        f"got {len(sample)}")
    if any(not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= MAX_ITEMS for s in sample):
        raise DataError(f"{source}: size_sample must be integers in [1, {MAX_ITEMS}]")
    if profile.nodes is not None:
        if not isinstance(profile.nodes, dict) or not all(
                isinstance(name, str) and isinstance(figures, dict)
                and all(isinstance(k, str) and _finite(v) and v >= 0 for k, v in figures.items())
                for name, figures in profile.nodes.items()):
            raise DataError(f"{source}: nodes must map node names to objects of finite figures >= 0")


def traffic_from_dict(doc: Any, source: str = "traffic profile") -> TrafficProfile:
    """A TrafficProfile from its JSON object; a one-line DataError naming ``source`` and the field otherwise."""
    if not isinstance(doc, dict) or doc.get("format") != TRAFFIC_FORMAT:
        raise DataError(f"{source} is not a {TRAFFIC_FORMAT} document (missing \"format\": \"{TRAFFIC_FORMAT}\")")
    if doc.get("version") != TRAFFIC_VERSION:
        raise DataError(f"{source} has traffic version {doc.get('version')!r}; this reader knows {TRAFFIC_VERSION}")
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        raise DataError(f"{source} is missing the field {missing[0]!r}")
    sizes = doc["sizes"]
    if not isinstance(sizes, dict) or not isinstance(sizes.get("edges"), list) \
            or not isinstance(sizes.get("counts"), list):
        raise DataError(f"{source}: sizes must be an object {{\"edges\": [...], \"counts\": [...]}}")
    for key in ("rate_qps", "size_sample"):
        if not isinstance(doc[key], list):
            raise DataError(f"{source}: {key} must be a list, got {type(doc[key]).__name__}")
    try:
        return TrafficProfile(
            recorded_from=str(doc["recorded_from"]), recorded_to=str(doc["recorded_to"]), requests=doc["requests"],
            peak_qps=doc["peak_qps"], peak_window_s=doc["peak_window_s"], mean_qps=doc["mean_qps"],
            interval_s=doc["interval_s"], rate_qps=tuple(doc["rate_qps"]), size_edges=tuple(sizes["edges"]),
            size_counts=tuple(sizes["counts"]), size_sample=tuple(doc["size_sample"]), source=str(doc["source"]),
            nodes=doc.get("nodes"))
    except DataError as err:  # the profile's own check names no file: name it
        raise DataError(f"{source}: {first_line(err).removeprefix(CHECK_SOURCE + ': ')}") from None


def save_traffic(profile: TrafficProfile, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict()) + "\n")
    return path


def load_traffic(path: str | Path) -> TrafficProfile:
    """The traffic profile at ``path``; a one-line ConfigError when it cannot be read, a DataError when it is
    empty, not JSON or inconsistent."""
    doc = read_json_document(path, "traffic profile",
                             "record one with `python -m recforge.serving.elastic.traffic record`")
    return traffic_from_dict(doc, source=f"traffic profile {path}")


def write_size_sample(profile: TrafficProfile, path: str | Path, *, label: str = "") -> str:
    """Write the profile's size sample as a sizes file (one item count a line) at ``path`` and return the text the
    profiler's ``sizes`` takes for it (``QuerySizes.parse`` reads an existing file's path as its sizes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# query sizes served {profile.recorded_from} .. {profile.recorded_to}" + (f" ({label})" if label else "")
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a reader never sees half a file
    partial.write_text("\n".join([header, *map(str, profile.size_sample)]) + "\n")
    partial.replace(path)
    return str(path)


def peak_rate(counts_per_s: Sequence[int], window_s: float = PEAK_WINDOW_S) -> float:
    """The highest mean rate (queries/s) over any ``window_s``-second window of per-second counts (the whole
    recording when it is shorter), never below the recording's mean rate (a recording shorter than two windows
    with its load at both ends has no window as busy as the whole)."""
    if not counts_per_s:
        return 0.0
    width = max(1, min(len(counts_per_s), round(window_s)))
    running = best = sum(counts_per_s[:width])
    for i in range(width, len(counts_per_s)):
        running += counts_per_s[i] - counts_per_s[i - width]
        best = max(best, running)
    return max(best / width, sum(counts_per_s) / len(counts_per_s))
