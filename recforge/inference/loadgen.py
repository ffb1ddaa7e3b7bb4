"""Open-loop load generator after DeepRecSys (Gupta et al., ISCA 2020): Poisson queries of many items each.

A *query* is one user request that ranks N candidate items (N = items per query, drawn from
:class:`QuerySizes`; DeepRecSys' production-like default is lognormal(mu=5.1, sigma=0.2), mean ~167).
The server splits a query into *sub-batches* of at most ``sub_batch`` items; ``workers`` threads run
sub-batches from one FIFO queue, so the sub-batches of one query run in parallel when workers are free
and one after another otherwise. A query's latency runs from its (scheduled) arrival until its last
sub-batch finished, so queueing delay counts.

The load is OPEN LOOP: a dispatcher thread releases queries at Poisson arrival times
(:func:`poisson_arrivals`) whatever the server's progress, so a server slower than the offered rate
shows as a growing tail latency instead of a silently lower offered rate (no coordinated omission).
With an :class:`Offload` (DeepRecSched's hybrid scheduling), a query of more than ``threshold`` items is not
split: it runs whole on the offload target (the accelerator, served by its own worker threads), and only the
smaller queries are split into sub-batches for the CPU workers.

Issuing stops at the end of the schedule; in-flight work then gets ``drain_timeout_s`` to finish, and
queries still unfinished after that count as errors (``timed_out``). With ``max_queue``, a query that
arrives while ``max_queue`` queries wait to start is dropped (``dropped``, also an error).

onnxruntime and numpy release the GIL while they compute, so worker threads run sub-batches truly in
parallel (give each session ``threads`` intra-op threads; workers x threads should not exceed the cores).

CLI::

    python -m recforge.inference.loadgen --onnx MODEL.onnx --spec SPEC.json --rate 200 --duration 10 \\
        [--sizes lognormal|normal|FILE] [--sub-batch 64] [--workers 2] [--threads 1] [--seed 0]

prints the :class:`LoadResult` as JSON; a bad setting prints one ``error: ...`` line (exit 1).
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from recforge.contracts.features import OUTPUT_NAME, FeatureSpec
from recforge.core.cli import run_step
from recforge.core.errors import ConfigError
from recforge.inference.onnx import onnx_session
from recforge.models.export import example_inputs

if TYPE_CHECKING:
    from recforge.contracts.features import FeatureSpec

MIN_ITEMS, MAX_ITEMS = 1, 1024  # items per query and per sub-batch
MAX_RATE_QPS = 100_000.0
MAX_DURATION_S = 3600.0
MAX_QUERIES = 1_000_000  # per run, so that the schedule and the records stay bounded
MAX_WORKERS = 256
MAX_THREADS = 64
DEFAULT_DRAIN_TIMEOUT_S = 10.0
LOGNORMAL_MU, LOGNORMAL_SIGMA = 5.1, 0.2  # DeepRecSys' default query-size distribution
NORMAL_MEAN, NORMAL_STD = 165.0, 40.0


# --------------------------------------------------------------------------------------------------------------
# Validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int, or a ConfigError naming ``name`` and the allowed range ``[low, high]``."""
    if not _is_int(value) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = True, unit: str = "") -> float:
    """``value`` as a finite float in ``(low, high]`` (``[low, high]`` if not ``low_open``), else a ConfigError."""
    ok = _is_number(value) and math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{name} must be a number in {interval}{' ' + unit if unit else ''}, got {value!r}")
    return float(value)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None:
        check_int("seed", rng, 0, 2**63 - 1)
    return np.random.default_rng(rng)


# --------------------------------------------------------------------------------------------------------------
# Query sizes and arrivals


@dataclass(frozen=True)
class QuerySizes:
    """Distribution of items per query; every sample is rounded to an int and clipped to [1, 1024].

    Build one with :meth:`lognormal`, :meth:`normal`, :meth:`from_file` (values sampled with replacement),
    :meth:`fixed`, or :meth:`parse` (the CLI's ``--sizes``).
    """

    kind: str  # "lognormal" | "normal" | "file" | "fixed"
    params: tuple[float, ...] = ()  # (mu, sigma) | (mean, std) | () | (n,)
    values: tuple[int, ...] = ()  # the file's sizes (kind "file")
    source: str = ""  # the file (kind "file")

    @classmethod
    def lognormal(cls, mu: float = LOGNORMAL_MU, sigma: float = LOGNORMAL_SIGMA) -> QuerySizes:
        """exp(Normal(mu, sigma)) items: median e^mu, mean e^(mu + sigma²/2). Default: DeepRecSys' (~167)."""
        mu = check_number("mu", mu, 0.0, math.log(MAX_ITEMS), low_open=False, unit="(log items)")
        sigma = check_number("sigma", sigma, 0.0, 3.0)
        return cls("lognormal", (mu, sigma))

    @classmethod
    def normal(cls, mean: float = NORMAL_MEAN, std: float = NORMAL_STD) -> QuerySizes:
        """Normal(mean, std) items, clipped to [1, 1024]."""
        mean = check_number("mean", mean, MIN_ITEMS, MAX_ITEMS, low_open=False, unit="items")
        std = check_number("std", std, 0.0, MAX_ITEMS, unit="items")
        return cls("normal", (mean, std))

    @classmethod
    def fixed(cls, n_items: int) -> QuerySizes:
        """Every query has ``n_items`` items."""
        return cls("fixed", (float(check_int("n_items", n_items, MIN_ITEMS, MAX_ITEMS)),))

    @classmethod
    def from_file(cls, path: str | Path) -> QuerySizes:
        """Sizes sampled with replacement from a text file of one integer in [1, 1024] per line (blank lines
        and ``#`` comments are skipped), e.g. a production trace's items per query."""
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"sizes file {path} cannot be read: {err.strerror or err}") from None
        values = []
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"sizes file {path} line {number}: {text!r} is not an integer") from None
            if not MIN_ITEMS <= value <= MAX_ITEMS:
                raise ConfigError(f"sizes file {path} line {number}: items per query must be in "
                                  f"[{MIN_ITEMS}, {MAX_ITEMS}], got {value}")
            values.append(value)
        if not values:
            raise ConfigError(f"sizes file {path} holds no sizes (one integer in [{MIN_ITEMS}, {MAX_ITEMS}] a line)")
        return cls("file", (), tuple(values), str(path))

    @classmethod
    def parse(cls, text: str) -> QuerySizes:
        """``lognormal[:MU,SIGMA]``, ``normal[:MEAN,STD]``, ``fixed:N`` or the path of a sizes file."""
        name, _, args = text.partition(":")
        if name in ("lognormal", "normal", "fixed"):
            try:
                numbers = [float(a) for a in args.split(",")] if args else []
            except ValueError:
                numbers = None
            arity = {"lognormal": (0, 2), "normal": (0, 2), "fixed": (1,)}[name]
            if numbers is None or len(numbers) not in arity:
                raise ConfigError(f"sizes {text!r}: use lognormal[:MU,SIGMA], normal[:MEAN,STD], fixed:N or a file")
            if name == "fixed":
                if not numbers[0].is_integer():
                    raise ConfigError(f"n_items must be an integer in [{MIN_ITEMS}, {MAX_ITEMS}], got {args}")
                return cls.fixed(int(numbers[0]))
            return getattr(cls, name)(*numbers)
        if not Path(text).is_file():
            raise ConfigError(f"sizes {text!r} is neither lognormal[:MU,SIGMA], normal[:MEAN,STD], fixed:N "
                              "nor an existing file")
        return cls.from_file(text)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` query sizes (int64, each in [1, 1024])."""
        n = check_int("n", n, 0, MAX_QUERIES)
        rng = _rng(rng)
        if self.kind == "lognormal":
            raw = rng.lognormal(self.params[0], self.params[1], n)
        elif self.kind == "normal":
            raw = rng.normal(self.params[0], self.params[1], n)
        elif self.kind == "file":
            raw = rng.choice(np.asarray(self.values, dtype=np.float64), n, replace=True)
        elif self.kind == "fixed":
            raw = np.full(n, self.params[0])
        else:
            raise ConfigError(f"sizes kind must be lognormal, normal, file or fixed, got {self.kind!r}")
        return np.clip(np.rint(raw), MIN_ITEMS, MAX_ITEMS).astype(np.int64)

    def describe(self) -> str:
        if self.kind == "lognormal":
            return f"lognormal(mu={self.params[0]:g}, sigma={self.params[1]:g})"
        if self.kind == "normal":
            return f"normal(mean={self.params[0]:g}, std={self.params[1]:g})"
        if self.kind == "fixed":
            return f"fixed({int(self.params[0])})"
        return f"file({self.source}, {len(self.values)} sizes)"


def poisson_arrivals(rate_qps: float, duration_s: float | None = None, n_queries: int | None = None,
                     rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Arrival offsets in seconds (float64, increasing) of a Poisson process of rate ``rate_qps``.

    Gaps are i.i.d. exponential with mean 1/rate; the first arrival is one gap after 0. Give exactly one
    of ``duration_s`` (every arrival before it) or ``n_queries`` (that many arrivals).
    """
    rate_qps = check_number("rate_qps", rate_qps, 0.0, MAX_RATE_QPS, unit="queries/s")
    rng = _rng(rng)
    if (duration_s is None) == (n_queries is None):
        raise ConfigError("give exactly one of duration_s and n_queries")
    if n_queries is not None:
        n_queries = check_int("n_queries", n_queries, 1, MAX_QUERIES)
        return np.cumsum(rng.exponential(1.0 / rate_qps, n_queries))
    duration_s = check_number("duration_s", duration_s, 0.0, MAX_DURATION_S, unit="s")
    expected = rate_qps * duration_s
    if expected > MAX_QUERIES:
        raise ConfigError(f"rate_qps * duration_s must be at most {MAX_QUERIES} queries, got {expected:.0f}; "
                          "lower the rate or the duration")
    chunk = int(expected + 10 * math.sqrt(expected) + 16)
    offsets = np.cumsum(rng.exponential(1.0 / rate_qps, chunk))
    for _ in range(1000):  # P(needing a second chunk) < 1e-20; bounded anyway
        if offsets[-1] >= duration_s:
            break
        offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(rng.exponential(1.0 / rate_qps, chunk))])
    arrivals = offsets[offsets < duration_s]
    if len(arrivals) > MAX_QUERIES:  # only at the statistical fringe of expected ~ MAX_QUERIES
        arrivals = arrivals[:MAX_QUERIES]
    return arrivals


def sub_batches(n_items: int, sub_batch: int) -> list[int]:
    """Sizes of the sub-batches a query of ``n_items`` is split into: ceil(n/sub_batch) of at most sub_batch."""
    n_items = check_int("n_items", n_items, MIN_ITEMS, MAX_ITEMS)
    sub_batch = check_int("sub_batch", sub_batch, 1, MAX_ITEMS)
    full, rest = divmod(n_items, sub_batch)
    return [sub_batch] * full + ([rest] if rest else [])


# --------------------------------------------------------------------------------------------------------------
# Targets


@runtime_checkable
class Target(Protocol):
    """What the load generator drives: ``infer(n)`` runs one sub-batch of ``n`` items (the target owns its
    inputs) and must be safe to call from several threads at once. ``max_batch`` (optional) bounds ``n``. If
    ``infer`` returns a string (e.g. the fleet node that answered), it is recorded in the query's ``served_by``."""

    name: str

    def infer(self, n_items: int) -> None: ...


class CallableTarget:
    """A target that calls ``fn(n_items)``: for tests and synthetic latency models."""

    def __init__(self, fn: Callable[[int], Any], name: str | None = None, max_batch: int = MAX_ITEMS):
        if not callable(fn):
            raise ConfigError(f"fn must be callable, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")
        self.max_batch = check_int("max_batch", max_batch, 1, MAX_ITEMS)

    @classmethod
    def sleeping(cls, fixed_ms: float, per_item_ms: float = 0.0, name: str | None = None) -> CallableTarget:
        """A synthetic server whose sub-batch of n items takes ``fixed_ms + per_item_ms * n`` (sleeps)."""
        fixed_ms = check_number("fixed_ms", fixed_ms, 0.0, 60_000.0, low_open=False, unit="ms")
        per_item_ms = check_number("per_item_ms", per_item_ms, 0.0, 60_000.0, low_open=False, unit="ms")

        def sleep(n_items: int) -> None:
            time.sleep((fixed_ms + per_item_ms * n_items) / 1000.0)

        return cls(sleep, name or f"sleep({fixed_ms:g}ms + {per_item_ms:g}ms/item)")

    def infer(self, n_items: int) -> Any:
        return self.fn(n_items)


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_spec(spec: FeatureSpec | str | Path) -> FeatureSpec:
    """A FeatureSpec, or one read from a spec JSON file (as training writes next to a model)."""

    if isinstance(spec, FeatureSpec):
        return spec
    path = Path(spec)
    try:
        return FeatureSpec.from_json(path.read_text())
    except OSError as err:
        raise ConfigError(f"spec file {path} cannot be read: {err.strerror or err}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"spec file {path} is not a feature spec: {_first_line(err)}") from None


class OnnxTarget:
    """An ONNX model of the named-tensor contract in onnxruntime (``threads`` intra-op threads).

    Inputs for ``max_batch`` rows are built once from ``recforge.models.export.example_inputs(spec, max_batch,
    seed)``; a sub-batch of n items runs on their first n rows (views, no copies). One session is shared by
    all workers (``InferenceSession.run`` is thread-safe). The constructor runs the model once at
    ``max_batch`` (warm-up, and a check that the model takes inputs of this spec).
    """

    def __init__(self, onnx_path: str | Path, spec: FeatureSpec | str | Path, threads: int = 1,
                 max_batch: int = MAX_ITEMS, seed: int = 0, providers: Sequence[Any] | None = None):

        self.threads = check_int("threads", threads, 1, MAX_THREADS)
        self.max_batch = check_int("max_batch", max_batch, 1, MAX_ITEMS)
        seed = check_int("seed", seed, 0, 2**63 - 1)
        self.path = Path(onnx_path)
        self.name = self.path.name
        self.spec = load_spec(spec)
        if not self.path.is_file():
            raise ConfigError(f"onnx_path {self.path} is not a file")
        try:
            self.session = onnx_session(self.path, self.threads, providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ConfigError(f"onnx_path {self.path} cannot be loaded by onnxruntime: {_first_line(err)}") from None
        built = example_inputs(self.spec, self.max_batch, seed)
        inputs = {k: np.ascontiguousarray(v.numpy()) for k, v in built.items()}
        names = [i.name for i in self.session.get_inputs()]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ConfigError(f"onnx_path {self.path} has inputs {missing} outside the contract {sorted(inputs)}")
        self._inputs = {n: inputs[n] for n in names}
        self._outputs = [OUTPUT_NAME] if OUTPUT_NAME in [o.name for o in self.session.get_outputs()] else None
        try:
            self.infer(self.max_batch)
            self.infer(1)
        except Exception as err:
            raise ConfigError(f"onnx_path {self.path} does not run on inputs of this spec: "
                              f"{_first_line(err)}") from None

    def infer(self, n_items: int) -> None:
        if not 1 <= n_items <= self.max_batch:
            raise ValueError(f"sub-batch of {n_items} items outside [1, {self.max_batch}] (max_batch)")
        self.session.run(self._outputs, {name: array[:n_items] for name, array in self._inputs.items()})


@dataclass(frozen=True)
class Offload:
    """DeepRecSched's CPU/accelerator split (Gupta et al., ISCA 2020, sec. 5): a query of more than ``threshold``
    items goes whole to ``target`` (e.g. a GPU session), run by ``workers`` threads of its own (one per stream);
    smaller queries stay on the CPU workers, split into sub-batches. Large queries amortise the accelerator's
    fixed launch and copy cost, small ones would only queue behind them. A query larger than the target's
    ``max_batch`` is cut into requests of ``max_batch`` items, all on the accelerator."""

    target: Target
    threshold: int  # items; a query of more items is offloaded (MAX_ITEMS: nothing is)
    workers: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.target, Target):
            raise ConfigError(f"offload target must have a name and an infer(n_items) method, got {self.target!r}")
        check_int("offload threshold", self.threshold, 0, MAX_ITEMS)
        check_int("offload workers", self.workers, 1, MAX_WORKERS)

    @property
    def max_batch(self) -> int:
        return int(getattr(self.target, "max_batch", MAX_ITEMS))

    def takes(self, n_items: int) -> bool:
        return n_items > self.threshold


def cpu_times() -> tuple[int, int] | None:
    """(total, steal) jiffies of all CPUs from /proc/stat; None where there is none (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(values), values[7]


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Share (%) of the CPU time between two :func:`cpu_times` samples that the hypervisor gave to other guests
    while this machine's vCPUs wanted to run; NaN when unknown."""
    if before is None or after is None or after[0] <= before[0]:
        return math.nan
    return 100.0 * (after[1] - before[1]) / (after[0] - before[0])


# --------------------------------------------------------------------------------------------------------------
# The open-loop run


@dataclass(frozen=True)
class QueryRecord:
    """One query of a run; times in seconds from the start of the run (NaN: never happened)."""

    arrival_s: float  # scheduled arrival: latency counts from here
    issued_s: float  # when the dispatcher actually released it
    start_s: float  # when its first sub-batch began
    finish_s: float  # when its last sub-batch ended
    items: int
    error: str | None

    @property
    def latency_ms(self) -> float:
        return (self.finish_s - self.arrival_s) * 1000.0


def _stat(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


@dataclass
class LoadResult:
    """Outcome of :func:`run_open_loop`. Latencies (ms) are over the queries completed without error."""

    target: str
    sizes: str
    sub_batch: int
    workers: int
    offered_qps: float  # the configured Poisson rate
    achieved_qps: float  # completed queries / wall time
    items_per_s: float  # items of completed queries / wall time
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    mean_wait_ms: float  # mean queueing delay: arrival to first sub-batch start (completed queries)
    queries: int  # arrivals issued
    completed: int
    errors: int  # target errors + dropped + timed_out
    dropped: int  # rejected at arrival: max_queue queries were already waiting
    timed_out: int  # unfinished when the drain timeout expired
    mean_items: float  # items per issued query
    duration_s: float  # measurement window: start to the later of the last completion and the arrival window's
    # end (duration_s, or the last arrival with n_queries); to the give-up time if queries timed out
    first_error: str | None = None
    offloaded: int = 0  # issued queries sent whole to the Offload target (0 without one)
    offload_threshold: int | None = None  # items; None: no offload
    offload_p95_ms: float = math.nan  # p95 of the completed offloaded queries
    # CPU steal (%) during the run: time the hypervisor ran other guests while ours wanted the CPU. On a shared VM
    # it comes in bursts that stall every thread for milliseconds; a run taken in one measures the host, not us.
    cpu_steal_pct: float = math.nan
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    arrival_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    issued_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    start_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    finish_s: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    query_errors: list[str | None] = field(default_factory=list, repr=False)
    served_by: list[tuple[str, ...]] = field(default_factory=list, repr=False)  # per issued query: what answered

    _ARRAYS = ("latencies_ms", "arrival_s", "issued_s", "start_s", "finish_s", "items", "query_errors", "served_by")

    def latencies_by(self, served: Callable[[tuple[str, ...]], bool]) -> np.ndarray:
        """Latencies (ms) of the queries completed without error whose ``served_by`` satisfies ``served``."""
        ok = [e is None for e in self.query_errors]
        picked = [served(s) for s, good in zip(self.served_by, ok, strict=True) if good]
        return self.latencies_ms[np.array(picked, dtype=bool)] if picked else np.zeros(0)

    def records(self) -> list[QueryRecord]:
        """One :class:`QueryRecord` per issued query, in arrival order."""
        return [QueryRecord(float(a), float(i), float(s), float(f), int(n), e) for a, i, s, f, n, e in zip(
            self.arrival_s, self.issued_s, self.start_s, self.finish_s, self.items, self.query_errors, strict=True)]

    def to_dict(self, include_latencies: bool = False) -> dict[str, Any]:
        """The summary as plain JSON-able values (NaN becomes None); per-query latencies only on request."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name in self._ARRAYS:
                continue
            value = getattr(self, name)
            out[name] = _stat(value) if isinstance(value, float) else value
        if include_latencies:
            out["latencies_ms"] = [round(float(x), 4) for x in self.latencies_ms]
        return out


def check_run_settings(rate_qps: float, duration_s: float | None = None, n_queries: int | None = None,
                       sub_batch: int = 64, workers: int = 2, seed: int = 0, max_queue: int | None = None,
                       drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
    """The ConfigError :func:`run_open_loop` would raise for these settings, before any model is loaded."""
    check_number("rate_qps", rate_qps, 0.0, MAX_RATE_QPS, unit="queries/s")
    if (duration_s is None) == (n_queries is None):
        raise ConfigError("give exactly one of duration_s and n_queries")
    if duration_s is not None:
        check_number("duration_s", duration_s, 0.0, MAX_DURATION_S, unit="s")
        if rate_qps * duration_s > MAX_QUERIES:
            raise ConfigError(f"rate_qps * duration_s must be at most {MAX_QUERIES} queries, "
                              f"got {rate_qps * duration_s:.0f}; lower the rate or the duration")
    else:
        check_int("n_queries", n_queries, 1, MAX_QUERIES)
    check_int("sub_batch", sub_batch, 1, MAX_ITEMS)
    check_int("workers", workers, 1, MAX_WORKERS)
    check_int("seed", seed, 0, 2**63 - 1)
    if max_queue is not None:
        check_int("max_queue", max_queue, 1, MAX_QUERIES)
    check_number("drain_timeout_s", drain_timeout_s, 0.0, MAX_DURATION_S, unit="s")


class _Run:
    """Shared state of one run: the dispatcher, the workers and the supervisor (the calling thread)."""

    def __init__(self, target: Target, arrivals: np.ndarray, sizes: np.ndarray, sub_batch: int, workers: int,
                 max_queue: int | None, offload: Offload | None = None):
        n = len(arrivals)
        self.target, self.arrivals, self.sizes = target, arrivals, sizes
        self.sub_batch, self.n_workers, self.max_queue = sub_batch, workers, max_queue
        self.offload = offload
        self.offloaded = np.zeros(n, dtype=bool)
        self.served_by: list[set[str] | None] = [None] * n
        self.issued = np.full(n, np.nan)
        self.start = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.remaining = np.zeros(n, dtype=np.int64)
        self.errors: list[str | None] = [None] * n
        self.issued_count = 0
        self.waiting = 0  # queries issued whose first sub-batch has not started
        self.dropped = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()  # set by the supervisor: skip all remaining work, record nothing more
        self.tasks: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.offload_tasks: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def dispatch(self) -> None:
        try:
            for qi, due in enumerate(self.arrivals):
                delay = due - self.now()
                if delay > 0 and self.stop.wait(delay):
                    return
                if self.stop.is_set():
                    return
                with self.lock:
                    self.issued[qi] = self.now()
                    self.issued_count = qi + 1
                    if self.max_queue is not None and self.waiting >= self.max_queue:
                        self.errors[qi] = f"dropped: {self.waiting} queries already waiting (max_queue)"
                        self.dropped += 1
                        continue
                    n = int(self.sizes[qi])
                    to_offload = self.offload is not None and self.offload.takes(n)
                    if to_offload:
                        parts = sub_batches(n, self.offload.max_batch)
                        self.offloaded[qi] = True
                    else:
                        parts = sub_batches(n, self.sub_batch)
                    self.remaining[qi] = len(parts)
                    self.waiting += 1
                tasks = self.offload_tasks if to_offload else self.tasks
                for n_items in parts:
                    tasks.put((qi, n_items))
        finally:
            for _ in range(self.n_workers):
                self.tasks.put(None)
            for _ in range(self.offload.workers if self.offload is not None else 0):
                self.offload_tasks.put(None)

    def work(self, offload: bool = False) -> None:
        tasks = self.offload_tasks if offload else self.tasks
        target = self.offload.target if offload else self.target
        while True:
            task = tasks.get()
            if task is None:
                return
            qi, n_items = task
            with self.lock:
                if self.stop.is_set():
                    continue
                if math.isnan(self.start[qi]):
                    self.start[qi] = self.now()
                    self.waiting -= 1
                failed = self.errors[qi] is not None
            error, served = None, None
            if not failed:  # a query whose sub-batch failed skips its other sub-batches
                try:
                    served = target.infer(n_items)
                except Exception as err:  # any failure of the target is the query's error
                    error = f"{type(err).__name__}: {_first_line(err)}"
            with self.lock:
                if self.stop.is_set():
                    continue
                if error and self.errors[qi] is None:
                    self.errors[qi] = error
                if isinstance(served, str):
                    if self.served_by[qi] is None:
                        self.served_by[qi] = set()
                    self.served_by[qi].add(served)
                self.remaining[qi] -= 1
                if self.remaining[qi] == 0:
                    self.finish[qi] = self.now()


def run_open_loop(target: Target, rate_qps: float, *, duration_s: float | None = None, n_queries: int | None = None,
                  sizes: QuerySizes | None = None, sub_batch: int = 64, workers: int = 2, seed: int = 0,
                  max_queue: int | None = None, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
                  offload: Offload | None = None) -> LoadResult:
    """Drive ``target`` with Poisson queries at ``rate_qps`` for ``duration_s`` seconds (or ``n_queries``).

    Query sizes come from ``sizes`` (default: DeepRecSys' lognormal); each query is split into sub-batches of
    at most ``sub_batch`` items, run by ``workers`` threads; with ``offload``, queries above its threshold run
    whole on its target instead. ``seed`` fixes the arrival schedule and the sizes.
    The call returns at most about ``drain_timeout_s`` after the last arrival.
    """
    check_run_settings(rate_qps, duration_s, n_queries, sub_batch, workers, seed, max_queue, drain_timeout_s)
    if not isinstance(target, Target):
        raise ConfigError(f"target must have a name and an infer(n_items) method, got {target!r}")
    max_batch = getattr(target, "max_batch", MAX_ITEMS)
    if sub_batch > max_batch:
        raise ConfigError(f"sub_batch must be an integer in [1, {max_batch}] (the target's max_batch), "
                          f"got {sub_batch}")
    if offload is not None and not isinstance(offload, Offload):
        raise ConfigError(f"offload must be an Offload, got {offload!r}")
    sizes = sizes if sizes is not None else QuerySizes.lognormal()
    if not isinstance(sizes, QuerySizes):
        raise ConfigError(f"sizes must be a QuerySizes, got {sizes!r}")
    arrival_rng, size_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    arrivals = poisson_arrivals(rate_qps, duration_s, n_queries, arrival_rng)
    query_sizes = sizes.sample(len(arrivals), size_rng)

    run = _Run(target, arrivals, query_sizes, sub_batch, workers, max_queue, offload)
    dispatcher = threading.Thread(target=run.dispatch, name="loadgen-dispatch", daemon=True)
    pool = [threading.Thread(target=run.work, name=f"loadgen-worker-{i}", daemon=True) for i in range(workers)]
    pool += [threading.Thread(target=run.work, args=(True,), name=f"loadgen-offload-{i}", daemon=True)
             for i in range(offload.workers if offload is not None else 0)]
    schedule_end = float(arrivals[-1]) if len(arrivals) else 0.0
    window_end = duration_s if duration_s is not None else schedule_end  # the offered-load window
    cpu_before = cpu_times()
    run.t0 = time.perf_counter()
    try:
        for thread in pool:
            thread.start()
        dispatcher.start()
        dispatcher.join(timeout=schedule_end + drain_timeout_s + 1.0)
        deadline = time.perf_counter() + drain_timeout_s
        for thread in pool:
            thread.join(timeout=max(0.0, deadline - time.perf_counter()))
    finally:
        with run.lock:
            run.stop.set()  # from here on, threads still running record nothing
            end = run.now()
            issued = run.issued_count
            errors = list(run.errors[:issued])
            finish = run.finish[:issued].copy()
            start = run.start[:issued].copy()
            issued_at = run.issued[:issued].copy()
            offloaded = run.offloaded[:issued].copy()
            served_by = [tuple(sorted(s)) if s else () for s in run.served_by[:issued]]
    steal = steal_pct(cpu_before, cpu_times())
    arrival = arrivals[:issued]
    items = query_sizes[:issued]
    timed_out = 0
    for qi in range(issued):
        if errors[qi] is None and math.isnan(finish[qi]):
            errors[qi] = f"timed out: unfinished {drain_timeout_s:g} s after the last arrival"
            timed_out += 1
    ok = np.array([e is None for e in errors], dtype=bool)
    latencies = (finish[ok] - arrival[ok]) * 1000.0
    waits = (start[ok] - arrival[ok]) * 1000.0
    finished = finish[~np.isnan(finish)]
    wall = max(float(finished.max()) if finished.size else 0.0, window_end, end if timed_out else 0.0, 1e-9)
    completed = int(ok.sum())

    def pct(q: float) -> float:
        return float(np.percentile(latencies, q)) if completed else math.nan

    offloaded_ok = offloaded[ok]

    return LoadResult(
        target=str(getattr(target, "name", type(target).__name__)),
        sizes=sizes.describe(),
        sub_batch=sub_batch,
        workers=workers,
        offered_qps=float(rate_qps),
        achieved_qps=completed / wall,
        items_per_s=float(items[ok].sum()) / wall,
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        mean_ms=float(latencies.mean()) if completed else math.nan,
        max_ms=float(latencies.max()) if completed else math.nan,
        mean_wait_ms=float(waits.mean()) if completed else math.nan,
        queries=issued,
        completed=completed,
        errors=issued - completed,
        dropped=run.dropped,
        timed_out=timed_out,
        mean_items=float(items.mean()) if issued else math.nan,
        duration_s=wall,
        first_error=next((e for e in errors if e is not None), None),
        offloaded=int(offloaded.sum()),
        offload_threshold=offload.threshold if offload is not None else None,
        offload_p95_ms=float(np.percentile(latencies[offloaded_ok], 95)) if offloaded_ok.any() else math.nan,
        cpu_steal_pct=steal,
        latencies_ms=latencies,
        arrival_s=arrival.copy(),
        issued_s=issued_at,
        start_s=start,
        finish_s=finish,
        items=items.copy(),
        query_errors=errors,
        served_by=served_by,
    )


# --------------------------------------------------------------------------------------------------------------
# CLI

_CLI_NAMES = {"rate_qps": "--rate", "duration_s": "--duration", "n_queries": "--queries", "sub_batch": "--sub-batch",
              "workers": "--workers", "threads": "--threads", "seed": "--seed", "max_queue": "--max-queue",
              "drain_timeout_s": "--drain-timeout", "onnx_path": "--onnx"}


def _cli_error(err: ConfigError) -> ConfigError:
    """The same error, naming the CLI flag instead of the Python parameter it starts with."""
    text = str(err)
    for name, flag in _CLI_NAMES.items():
        if text.startswith(name + " "):
            return ConfigError(flag + text[len(name):])
    return err


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.inference.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", required=True, help="ONNX model of the named-tensor contract")
    parser.add_argument("--spec", required=True, help="the model's spec.json (shapes and vocabularies)")
    parser.add_argument("--rate", type=float, required=True, help="offered load, queries/s (Poisson)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, help="seconds of arrivals (default 10)")
    length.add_argument("--queries", type=int, help="number of queries instead of a duration")
    parser.add_argument("--sizes", default="lognormal",
                        help="items per query: lognormal[:MU,SIGMA] (default 5.1,0.2), normal[:MEAN,STD], "
                             "fixed:N, or a file of one integer per line")
    parser.add_argument("--sub-batch", type=int, default=64, help="max items per sub-batch (1..1024)")
    parser.add_argument("--workers", type=int, default=2, help="worker threads running sub-batches")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals, sizes and inputs")
    parser.add_argument("--max-queue", type=int, help="drop queries arriving while this many wait (default: none)")
    parser.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S,
                        help="seconds in-flight work may take after the last arrival")
    args = parser.parse_args(argv)

    def step() -> dict[str, Any]:
        duration = args.duration if args.duration is not None or args.queries is not None else 10.0
        try:
            check_run_settings(args.rate, duration, args.queries, args.sub_batch, args.workers, args.seed,
                               args.max_queue, args.drain_timeout)
            sizes = QuerySizes.parse(args.sizes)
            target = OnnxTarget(args.onnx, args.spec, threads=args.threads, max_batch=args.sub_batch, seed=args.seed)
            result = run_open_loop(target, args.rate, duration_s=duration, n_queries=args.queries, sizes=sizes,
                                   sub_batch=args.sub_batch, workers=args.workers, seed=args.seed,
                                   max_queue=args.max_queue, drain_timeout_s=args.drain_timeout)
        except ConfigError as err:
            raise _cli_error(err) from None
        return result.to_dict()

    return run_step(step)


if __name__ == "__main__":
    sys.exit(main())
