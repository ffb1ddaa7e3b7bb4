"""The benchmarks' machine-readable result lines, one per model family and path::

    bench: family=dlrm path=inprocess latency_ratio=0.18 throughput_ratio=3.4 auc_ratio=0.9995

``path`` is ``inprocess`` (``make bench``: onnxruntime in the bench's process) or ``served`` (``make bench-fleet``:
the Triton fleet behind its balancer). The ratios are RecForge over the baseline, medians over the interleaved
rounds: ``latency_ratio`` the p95 at the same offered load, ``throughput_ratio`` the latency-bounded throughput,
``auc_ratio`` the test AUC; ``_low``/``_high`` keys carry their intervals. A figure that could not be measured is
``nan``. :func:`format_bench_line` writes one, :func:`parse_bench_lines` reads every one of a text (other lines
are ignored), so a script can compare runs (``recforge.tools.bench.compare``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from recforge.core.errors import DataError

PREFIX = "bench:"
# served-vs-profile: the champion under two profiles' generated configs (fleet_bench --baseline-profile)
PATHS = ("inprocess", "served", "served-vs-profile")
KEY_FIELDS = ("family", "path")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def format_bench_line(family: str, path: str, figures: Mapping[str, float | None]) -> str:
    """``bench: family=F path=P k=v ...`` with the figures in the given order (4 significant digits; None and
    non-finite values as ``nan``)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if not NAME.match(family):
        raise ValueError(f"family {family!r} is not a plain name")
    parts = [PREFIX, f"family={family}", f"path={path}"]
    for key, value in figures.items():
        if not NAME.match(key) or key in KEY_FIELDS:
            raise ValueError(f"figure name {key!r} is not a plain name (or is a key field)")
        number = float(value) if value is not None else math.nan
        parts.append(f"{key}={format(number, '.4g') if math.isfinite(number) else 'nan'}")
    return " ".join(parts)


def parse_bench_line(line: str) -> tuple[tuple[str, str], dict[str, float]]:
    """((family, path), {figure: value}) of one ``bench:`` line; DataError naming what is wrong otherwise."""
    text = line.strip()
    if not text.startswith(PREFIX):
        raise DataError(f"not a bench line (no {PREFIX!r} prefix): {text[:80]!r}")
    fields: dict[str, str] = {}
    for token in text[len(PREFIX):].split():
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise DataError(f"bench line field {token!r} is not key=value: {text[:120]!r}")
        fields[key] = value
    missing = [k for k in KEY_FIELDS if k not in fields]
    if missing:
        raise DataError(f"bench line without {', '.join(missing)}: {text[:120]!r}")
    figures = {}
    for key, value in fields.items():
        if key in KEY_FIELDS:
            continue
        try:
            figures[key] = float(value)
        except ValueError:
            raise DataError(f"bench line figure {key}={value!r} is not a number: {text[:120]!r}") from None
    return (fields["family"], fields["path"]), figures


def parse_bench_lines(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """{(family, path): figures} of every ``bench:`` line of ``text`` (a later line of the same key wins)."""
    return dict(parse_bench_line(line) for line in text.splitlines() if line.strip().startswith(PREFIX))
