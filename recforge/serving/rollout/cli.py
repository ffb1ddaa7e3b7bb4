"""``python -m recforge.serving.rollout history``: past rollouts with their outcome and figures.

A rollout itself runs as the ``rollout`` DAG (``make rollout``), not from this CLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from recforge.core.cli import run_step
from recforge.serving.rollout.history import read_history


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.rollout",
                                     description="Past rollouts of the fleet (a rollout runs as the `rollout` DAG: "
                                                 "make rollout MODEL=... TARGET=... [VERSION=...]).")
    sub = parser.add_subparsers(dest="command", required=True)
    hist = sub.add_parser("history", help="past rollouts, newest last")
    hist.add_argument("--model", default=None)
    hist.add_argument("--last", type=int, default=0, help="only the newest N")
    args = parser.parse_args(argv)

    def step() -> Any:
        records = read_history(args.model)
        return records[-args.last:] if args.last > 0 else records

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
