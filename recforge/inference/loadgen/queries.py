"""What the load is made of: query sizes (items per query), Poisson arrival times and the split of a query into
sub-batches."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recforge.core.errors import ConfigError
from recforge.inference.loadgen.settings import (
    LOGNORMAL_MU,
    LOGNORMAL_SIGMA,
    MAX_DURATION_S,
    MAX_ITEMS,
    MAX_QUERIES,
    MAX_RATE_QPS,
    MIN_ITEMS,
    NORMAL_MEAN,
    NORMAL_STD,
    check_int,
    check_number,
    seeded_rng,
)


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
        rng = seeded_rng(rng)
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
    rng = seeded_rng(rng)
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

