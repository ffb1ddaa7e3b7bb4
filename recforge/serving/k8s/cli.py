"""``python -m recforge.serving.k8s --config DEPLOY.json --out DIR`` (``make k8s-manifests``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from recforge.core.cli import run_step
from recforge.serving.k8s.render import generate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.serving.k8s",
                                     description="Kubernetes manifests and Helm values for the multi-machine "
                                                 "deployment, generated from profile documents.")
    parser.add_argument("--config", default="infra/k8s/deploy.example.json", help="deployment config JSON")
    parser.add_argument("--out", default="infra/k8s/generated", help="output folder")
    args = parser.parse_args(argv)
    return run_step(lambda: generate(args.config, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
