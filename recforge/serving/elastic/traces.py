"""Load traces: arrival rate per interval and query-size distribution per interval, their file format
(``recforge-trace`` version 1, JSON) and seeded generators (diurnal day, step bursts, ramp, replay).

A trace file is one JSON object::

    {"format": "recforge-trace", "version": 1, "name": "diurnal", "interval_s": 1.0,
     "rate_qps": [812.5, ...],                       # mean arrival rate of each interval, queries/s
     "size_edges": [1, 8, 16, ..., 1025],            # query-size bins [edge_i, edge_i+1) in items
     "mix_interval_s": 60.0,                         # the size mix is given per mix interval
     "size_mix": [[0.0, 0.01, ...], ...],            # fractions of queries per bin, one row per mix interval
     "bursts": [{"start_s": 240.0, "duration_s": 30.0, "factor": 2.0}],
     "meta": {"seed": 0, "time_compression": 120.0, ...}}

Readers reject other versions. Rates are mean rates (a generator's Poisson arrivals are drawn by whoever replays
the trace, so one trace file replays the same offered load under every policy).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtr

from recforge.core.errors import ConfigError, DataError, first_line
from recforge.core.json_document import read_json_document

if TYPE_CHECKING:  # the records come from requestlog.parse_lines; importing the balancer package costs seconds
    from recforge.serving.loadbalancer.requestlog import RequestRecord

TRACE_FORMAT = "recforge-trace"
TRACE_VERSION = 1
# Query-size bins in items: [edge_i, edge_i+1); 1025 closes the last bin at the 1024-item maximum of a query.
SIZE_EDGES = (1, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512, 768, 1025)
DEFAULT_MU, DEFAULT_SIGMA = 5.1, 0.2  # DeepRecSys' lognormal query size (the profiles' default load)
DAY_S = 86_400.0


@dataclass(frozen=True)
class Burst:
    """A step burst: the rate is multiplied by ``factor`` during [start_s, start_s + duration_s)."""

    start_s: float
    duration_s: float
    factor: float = 2.0


@dataclass(frozen=True)
class Trace:
    """Arrival rate per interval and query-size mix per mix interval (see the module docstring)."""

    name: str
    interval_s: float
    rate_qps: np.ndarray
    size_edges: tuple[int, ...]
    mix_interval_s: float
    size_mix: np.ndarray  # (mix intervals, bins), rows sum to 1
    bursts: tuple[Burst, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rates, mix = np.asarray(self.rate_qps, dtype=float), np.asarray(self.size_mix, dtype=float)
        object.__setattr__(self, "rate_qps", rates)
        object.__setattr__(self, "size_mix", mix)
        if self.interval_s <= 0 or self.mix_interval_s <= 0:
            raise DataError(f"trace {self.name}: interval_s and mix_interval_s must be > 0")
        if rates.ndim != 1 or rates.size == 0:
            raise DataError(f"trace {self.name} has no intervals (rate_qps is empty)")
        if not np.all(np.isfinite(rates)) or np.any(rates < 0):
            raise DataError(f"trace {self.name}: rate_qps must be finite and >= 0")
        if list(self.size_edges) != sorted(set(self.size_edges)) or len(self.size_edges) < 2 or self.size_edges[0] < 1:
            raise DataError(f"trace {self.name}: size_edges must be >= 2 increasing item counts from 1")
        if mix.ndim != 2 or mix.shape[0] == 0 or mix.shape[1] != len(self.size_edges) - 1:
            raise DataError(f"trace {self.name}: size_mix must have one row per mix interval and "
                            f"{len(self.size_edges) - 1} columns (one per size bin), got shape {mix.shape}")
        if np.any(mix < 0) or not np.allclose(mix.sum(axis=1), 1.0, atol=1e-6):
            raise DataError(f"trace {self.name}: every size_mix row must be fractions >= 0 summing to 1")

    @property
    def duration_s(self) -> float:
        return self.rate_qps.size * self.interval_s

    @property
    def bin_sizes(self) -> np.ndarray:
        """A representative size of each bin (geometric middle), in items."""
        edges = np.asarray(self.size_edges, dtype=float)
        return np.sqrt(edges[:-1] * np.maximum(edges[1:] - 1, edges[:-1]))

    def rate_at(self, t: float) -> float:
        return float(self.rate_qps[min(int(t // self.interval_s), self.rate_qps.size - 1)])

    def mix_at(self, t: float) -> np.ndarray:
        return self.size_mix[min(int(t // self.mix_interval_s), self.size_mix.shape[0] - 1)]

    def mean_items(self, t: float) -> float:
        return float(self.mix_at(t) @ self.bin_sizes)

    def scaled(self, factor: float) -> Trace:
        """The same trace with every rate multiplied by ``factor`` (e.g. to size it to a fleet)."""
        return Trace(self.name, self.interval_s, self.rate_qps * factor, self.size_edges, self.mix_interval_s,
                     self.size_mix, self.bursts, {**self.meta, "scaled_by": factor})

    def to_dict(self) -> dict[str, Any]:
        return {"format": TRACE_FORMAT, "version": TRACE_VERSION, "name": self.name, "interval_s": self.interval_s,
                "rate_qps": [round(float(r), 4) for r in self.rate_qps], "size_edges": list(self.size_edges),
                "mix_interval_s": self.mix_interval_s,
                "size_mix": [[round(float(f), 6) for f in row] for row in self.size_mix],
                "bursts": [vars(b) for b in self.bursts], "meta": self.meta}


def save_trace(trace: Trace, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace.to_dict()))
    return path


def trace_from_dict(doc: Any, source: str = "trace") -> Trace:
    """A Trace from its JSON object; a one-line DataError naming what is wrong otherwise."""
    if not isinstance(doc, dict) or doc.get("format") != TRACE_FORMAT:
        raise DataError(f"{source} is not a {TRACE_FORMAT} document (missing \"format\": \"{TRACE_FORMAT}\")")
    if doc.get("version") != TRACE_VERSION:
        raise DataError(f"{source} has trace version {doc.get('version')!r}; this reader knows {TRACE_VERSION}")
    missing = [key for key in ("interval_s", "rate_qps", "size_edges", "mix_interval_s", "size_mix") if key not in doc]
    if missing:
        raise DataError(f"{source} is missing the field {missing[0]!r}")
    try:
        # a row normalised to 1 after rounding to 6 digits on save
        mix = np.asarray(doc["size_mix"], dtype=float)
        if mix.ndim == 2 and mix.size:
            mix = mix / np.where(mix.sum(axis=1, keepdims=True) > 0, mix.sum(axis=1, keepdims=True), 1.0)
        return Trace(name=str(doc.get("name", "trace")), interval_s=float(doc["interval_s"]),
                     rate_qps=np.asarray(doc["rate_qps"], dtype=float), size_edges=tuple(doc["size_edges"]),
                     mix_interval_s=float(doc["mix_interval_s"]), size_mix=mix,
                     bursts=tuple(Burst(**b) for b in doc.get("bursts", [])), meta=dict(doc.get("meta", {})))
    except DataError as err:
        raise DataError(f"{source}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{source} has a malformed field: {first_line(err)}") from None


def load_trace(path: str | Path) -> Trace:
    """The trace at ``path``; a one-line ConfigError when it is missing, a DataError when empty or corrupt."""
    doc = read_json_document(path, "trace file", "write one with recforge.serving.elastic.traces.save_trace")
    return trace_from_dict(doc, source=f"trace file {path}")


def schedule(trace: Trace, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times in s, query sizes in items) of one replay of ``trace``: per interval a Poisson count at its
    rate, spread uniformly over the interval (a Poisson process of that rate), each query's size drawn from the
    interval's mix (its bin by the mix, then uniformly within the bin's items). Seeded: every policy of a benchmark
    gets the same queries."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(trace.rate_qps * trace.interval_s)
    starts = np.repeat(np.arange(trace.rate_qps.size) * trace.interval_s, counts)
    arrivals = np.sort(starts + rng.uniform(0.0, trace.interval_s, starts.size))
    edges = np.asarray(trace.size_edges)
    mix_rows = np.minimum((arrivals // trace.mix_interval_s).astype(np.int64), trace.size_mix.shape[0] - 1)
    cumulative = np.cumsum(trace.size_mix, axis=1)
    picks = rng.uniform(0.0, 1.0, arrivals.size)
    bins = np.minimum((cumulative[mix_rows] < picks[:, None]).sum(axis=1), edges.size - 2)
    low, high = edges[bins], np.maximum(edges[bins + 1], edges[bins] + 1)  # [low, high) items
    sizes = np.minimum(low + np.floor(rng.uniform(0.0, 1.0, arrivals.size) * (high - low)), 1024).astype(np.int64)
    return arrivals, sizes


# --- generators ---------------------------------------------------------------------------------------------------

def lognormal_mix(mu: float = DEFAULT_MU, sigma: float = DEFAULT_SIGMA,
                  edges: Sequence[int] = SIZE_EDGES) -> np.ndarray:
    """Fractions of lognormal(mu, sigma) query sizes in each bin (sizes clipped to [1, 1024] as the load
    generator clips them)."""
    cdf = ndtr((np.log(np.asarray(edges, dtype=float)) - mu) / sigma)
    cdf[0], cdf[-1] = 0.0, 1.0  # clipping puts the tails in the first and last bins
    return np.diff(cdf)


def _mix_rows(n: int, mu_of: Any, sigma: float) -> np.ndarray:
    return np.stack([lognormal_mix(mu_of(i), sigma) for i in range(n)])


def _noisy(rates: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return rates * np.exp(rng.normal(0.0, noise, rates.size)) if noise > 0 else rates


def diurnal(minutes: float = 12.0, peak_qps: float = 1000.0, peak_to_trough: float = 4.0, *,
            interval_s: float = 1.0, mix_interval_s: float = 10.0, mu: float = DEFAULT_MU,
            sigma: float = DEFAULT_SIGMA, mu_swing: float = 0.1, noise: float = 0.02, seed: int = 0) -> Trace:
    """A day compressed to ``minutes``: a raised cosine from the trough (midnight) to the peak (noon) with
    peak/trough = ``peak_to_trough``; queries grow slightly at the peak (lognormal mu + ``mu_swing``), and each
    interval's rate carries seeded lognormal noise of ``noise`` (relative)."""
    if minutes <= 0 or peak_qps <= 0 or peak_to_trough < 1:
        raise ConfigError("diurnal: minutes and peak_qps must be > 0 and peak_to_trough >= 1")
    rng = np.random.default_rng(seed)
    n = max(1, round(minutes * 60 / interval_s))
    phase = (np.arange(n) + 0.5) / n  # fraction of the day
    shape = (1 - np.cos(2 * math.pi * phase)) / 2  # 0 at midnight, 1 at noon
    trough = peak_qps / peak_to_trough
    rates = _noisy(trough + (peak_qps - trough) * shape, noise, rng)
    n_mix = max(1, math.ceil(n * interval_s / mix_interval_s))
    mix = _mix_rows(n_mix, lambda i: mu + mu_swing * (1 - math.cos(2 * math.pi * (i + 0.5) / n_mix)) / 2, sigma)
    return Trace("diurnal", interval_s, rates, SIZE_EDGES, mix_interval_s, mix,
                 meta={"seed": seed, "minutes": minutes, "peak_qps": peak_qps, "peak_to_trough": peak_to_trough,
                       "time_compression": DAY_S / (minutes * 60), "noise": noise})


def with_bursts(trace: Trace, durations_s: Iterable[float] = (10.0, 30.0, 60.0), factor: float = 2.0,
                starts_s: Iterable[float] | None = None) -> Trace:
    """``trace`` with step bursts: the rate times ``factor`` for each duration, starting at ``starts_s`` (by
    default spread evenly over the trace)."""
    durations = list(durations_s)
    starts = list(starts_s) if starts_s is not None else [
        trace.duration_s * (i + 1) / (len(durations) + 1) for i in range(len(durations))]
    if len(starts) != len(durations):
        raise ConfigError(f"with_bursts: {len(starts)} start(s) for {len(durations)} duration(s)")
    rates = trace.rate_qps.copy()
    times = np.arange(rates.size) * trace.interval_s
    bursts = []
    for start, duration in zip(starts, durations, strict=True):
        rates[(times >= start) & (times < start + duration)] *= factor
        bursts.append(Burst(float(start), float(duration), float(factor)))
    return Trace(f"{trace.name}+bursts", trace.interval_s, rates, trace.size_edges, trace.mix_interval_s,
                 trace.size_mix, trace.bursts + tuple(bursts), dict(trace.meta))


def step_bursts(base_qps: float = 500.0, durations_s: Sequence[float] = (10.0, 30.0, 60.0), factor: float = 2.0,
                gap_s: float = 120.0, *, interval_s: float = 1.0, noise: float = 0.02, seed: int = 0) -> Trace:
    """A steady ``base_qps`` with a ``factor`` step burst of each duration, ``gap_s`` of base load around each."""
    rng = np.random.default_rng(seed)
    total = gap_s * (len(durations_s) + 1) + sum(durations_s)
    n = max(1, round(total / interval_s))
    flat = Trace("steady", interval_s, _noisy(np.full(n, float(base_qps)), noise, rng), SIZE_EDGES, total,
                 lognormal_mix()[None, :], meta={"seed": seed, "base_qps": base_qps, "noise": noise})
    starts, t = [], gap_s
    for duration in durations_s:
        starts.append(t)
        t += duration + gap_s
    burst = with_bursts(flat, durations_s, factor, starts)
    return Trace("bursts", burst.interval_s, burst.rate_qps, burst.size_edges, burst.mix_interval_s,
                 burst.size_mix, burst.bursts, burst.meta)


def ramp(minutes: float = 10.0, start_qps: float = 100.0, end_qps: float = 1000.0, *, interval_s: float = 1.0,
         noise: float = 0.02, seed: int = 0) -> Trace:
    """A slow linear ramp from ``start_qps`` to ``end_qps`` over ``minutes``."""
    rng = np.random.default_rng(seed)
    n = max(1, round(minutes * 60 / interval_s))
    rates = _noisy(np.linspace(start_qps, end_qps, n), noise, rng)
    return Trace("ramp", interval_s, rates, SIZE_EDGES, n * interval_s, lognormal_mix()[None, :],
                 meta={"seed": seed, "start_qps": start_qps, "end_qps": end_qps, "noise": noise})


def replay(arrivals_s: Sequence[float], sizes: Sequence[float], *, interval_s: float = 1.0,
           mix_interval_s: float = 10.0, name: str = "replay") -> Trace:
    """The trace of recorded requests: per-request arrival times (s, any origin) and query sizes (items), binned
    into rates per ``interval_s`` and size mixes per ``mix_interval_s`` (an interval with no request keeps the
    previous mix)."""
    times, size = np.asarray(arrivals_s, dtype=float), np.asarray(sizes, dtype=float)
    if times.size == 0:
        raise DataError("replay: no recorded requests to replay")
    if times.size != size.size:
        raise DataError(f"replay: {times.size} arrival time(s) but {size.size} size(s)")
    times = times - times.min()
    n = int(times.max() // interval_s) + 1
    rates = np.bincount((times // interval_s).astype(int), minlength=n) / interval_s
    n_mix = int(times.max() // mix_interval_s) + 1
    edges = np.asarray(SIZE_EDGES)
    bins = np.clip(np.searchsorted(edges, np.clip(size, 1, 1024), side="right") - 1, 0, edges.size - 2)
    counts = np.zeros((n_mix, edges.size - 1))
    np.add.at(counts, ((times // mix_interval_s).astype(int), bins), 1)
    mix = np.empty_like(counts)
    previous = np.bincount(bins, minlength=edges.size - 1) / bins.size  # before the first request: the overall mix
    for i, row in enumerate(counts):
        previous = row / row.sum() if row.sum() > 0 else previous
        mix[i] = previous
    return Trace(name, interval_s, rates, SIZE_EDGES, mix_interval_s, mix,
                 meta={"requests": int(times.size), "source": "replay"})


def replay_request_log(records: Iterable[RequestRecord], bytes_per_item: float, *, interval_s: float = 1.0,
                       mix_interval_s: float = 10.0) -> Trace:
    """The trace of the balancer's request log (``requestlog.parse_lines``): its inference requests (POSTs),
    sized by body bytes / ``bytes_per_item`` (the request encoding's bytes per item)."""
    if bytes_per_item <= 0:
        raise ConfigError(f"replay_request_log: bytes_per_item must be > 0, got {bytes_per_item}")
    posts = [r for r in records if r.method == "POST"]
    return replay([r.accepted_at for r in posts], [max(1.0, r.request_bytes / bytes_per_item) for r in posts],
                  interval_s=interval_s, mix_interval_s=mix_interval_s, name="request-log")
