"""Command line of the compression stage: every variant of one trained model, printed as JSON.

    python -m recforge.pipeline.compression --model-dir D --features F --out O [--base fp32] [--config JSON]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from recforge.core.cli import json_object, run_step
from recforge.pipeline.compression.config import CompressConfig, parse_base
from recforge.pipeline.compression.variants import compress_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recforge.pipeline.compression",
        description="Model compression: ONNX variants of one trained model, each a base × a precision.")
    parser.add_argument("--model-dir", type=Path, required=True, help="trained model folder (state_dict.pt...)")
    parser.add_argument("--features", type=Path, required=True, help="features folder the model was trained on")
    parser.add_argument("--out", type=Path, required=True, help="output folder; one subfolder per base")
    parser.add_argument("--base", action="append", help="base to build (fp32, prunedNN, student); repeatable; "
                                                        "default: every base of the config")
    parser.add_argument("--config", default="{}", help="CompressConfig overrides as JSON")
    args = parser.parse_args(argv)

    def step() -> list[dict[str, Any]]:
        overrides = json_object(args.config)
        cfg = CompressConfig.from_dict(overrides)
        for base in args.base or []:
            parse_base(base)
        return [v.to_dict() for v in compress_model(args.model_dir, args.features, args.out, cfg, args.base)]

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_step(step)
