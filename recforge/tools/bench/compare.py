"""The spread between two benchmark runs, from their ``bench:`` lines (``recforge.tools.bench.bench_line``)::

    python -m recforge.tools.bench.compare A.txt B.txt [--tolerance 0.10]

Each file is any text holding the lines (a saved ``make bench`` / ``make bench-fleet`` output). For every
(family, path) in both and every headline figure (``latency_ratio``, ``throughput_ratio``, ``auc_ratio``), it prints
A, B and B / A - 1; the exit status is 1 when a spread exceeds ``--tolerance`` (issue 12: two runs on different
days agree within 10%), 2 when the files share no (family, path).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from recforge.core.errors import DataError
from recforge.tools.bench.bench_line import parse_bench_lines

HEADLINE = ("latency_ratio", "throughput_ratio", "auc_ratio")


def spreads(a: Mapping[tuple[str, str], Mapping[str, float]], b: Mapping[tuple[str, str], Mapping[str, float]],
            figures: Sequence[str] = HEADLINE) -> list[dict]:
    """One row per (family, path) in both and figure in both: {family, path, figure, a, b, spread = b / a - 1}
    (spread NaN where a is 0 or either is not finite)."""
    rows = []
    for key in sorted(set(a) & set(b)):
        for figure in figures:
            if figure not in a[key] or figure not in b[key]:
                continue
            x, y = a[key][figure], b[key][figure]
            spread = y / x - 1 if math.isfinite(x) and math.isfinite(y) and x != 0 else math.nan
            rows.append({"family": key[0], "path": key[1], "figure": figure, "a": x, "b": y, "spread": spread})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("a", help="first run's output (text with bench: lines)")
    parser.add_argument("b", help="second run's output")
    parser.add_argument("--tolerance", type=float, default=0.10, help="largest |B / A - 1| accepted (default 0.10)")
    args = parser.parse_args(argv)
    try:
        runs = [parse_bench_lines(Path(p).read_text()) for p in (args.a, args.b)]
    except (OSError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = spreads(*runs)
    if not rows:
        print(f"error: {args.a} and {args.b} share no (family, path) bench line", file=sys.stderr)
        return 2
    print(f"{'family':10s} {'path':10s} {'figure':17s} {'A':>9s} {'B':>9s} {'B/A-1':>8s}")
    worst = 0.0
    for r in rows:
        bad = not math.isfinite(r["spread"]) or abs(r["spread"]) > args.tolerance
        worst = max(worst, abs(r["spread"]) if math.isfinite(r["spread"]) else math.inf)
        print(f"{r['family']:10s} {r['path']:10s} {r['figure']:17s} {r['a']:9.4g} {r['b']:9.4g} "
              f"{r['spread']:+8.1%}{'  > tolerance' if bad else ''}")
    print(f"compare: rows={len(rows)} max_abs_spread={worst:.4g} tolerance={args.tolerance:g} "
          f"agree={worst <= args.tolerance}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
