"""Table bytes and AUC of the quantized-table precisions at several row groups, per MovieLens family: the sweep
behind ``CompressConfig.table_row_group_int8`` / ``_int4`` (docs/compression.md).

Each family's fp32 model of a nightly work folder (``<work>/models/<family>/model.onnx``) is stored with int8 and
int4 tables at each row group G (recforge.pipeline.compression.table_quant.quantize_tables; an int4 variant's
tables of odd D in 8-bit groups of ``--int8-group`` rows, as the compression stage does), and scored on the
folder's test split against the fp32 model. One JSON line per family, precision and G.

CLI::

    python -m recforge.tools.table_groups .recforge/work/1998-04-22 [--groups 1,8,32,128] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recforge.core.cli import run_step
from recforge.core.errors import ConfigError
from recforge.inference.onnx import onnx_predict
from recforge.pipeline.compression.table_quant import quantize_tables, table_reports
from recforge.pipeline.data.features import load_split

FAMILIES = ("dlrm", "wide_deep", "ncf", "din")


def sweep(work: Path, groups: Sequence[int], out: Path, int8_group: int = 128) -> list[dict[str, Any]]:
    from sklearn.metrics import roc_auc_score

    test = load_split(work / "features", "test")
    rows = []
    for family in FAMILIES:
        fp32 = work / "models" / family / "model.onnx"
        if not fp32.exists():
            continue
        base = float(roc_auc_score(test.label, onnx_predict(fp32, test)))
        for precision in ("int8", "int4"):
            for group in groups:
                dst = out / f"{family}.{precision}.g{group}.onnx"
                details = quantize_tables(fp32, dst, precision, group=group,
                                          int8_fallback_group=int8_group if precision == "int4" else None)
                auc = float(roc_auc_score(test.label, onnx_predict(dst, test)))
                row = {"family": family, "precision": precision, "group": group, "auc_fp32": round(base, 5),
                       "auc": round(auc, 5), "auc_ratio": round(auc / base, 5),
                       "table_bytes_ratio": round(details["table_bytes_before"] / details["table_bytes_after"], 3),
                       "kept_fp32": sorted(details["kept_fp32"]), "int8_fallback": details["int8_fallback"],
                       "within_bound": all(r.within_bound for r in table_reports(fp32, dst))}
                print(json.dumps(row), flush=True)
                rows.append(row)
    if not rows:
        raise ConfigError(f"{work}/models holds none of {', '.join(FAMILIES)}: run `make run` (or `make nightly`)")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.table_groups", description=__doc__.split("\n")[0])
    parser.add_argument("work", type=Path, help="a nightly work folder (.recforge/work/<day>)")
    parser.add_argument("--groups", default="1,8,32,128", help="row groups, comma-separated")
    parser.add_argument("--int8-group", type=int, default=128,
                        help="row group of an int4 variant's 8-bit tables (odd D)")
    parser.add_argument("--out", type=Path, default=None, help="keep the quantized models here (default: temporary)")
    args = parser.parse_args(argv)

    def step() -> Any:
        try:
            groups = [int(g) for g in args.groups.split(",")]
        except ValueError as err:
            raise ConfigError(f"--groups: comma-separated integers, got {args.groups!r}") from err
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            return {"rows": len(sweep(args.work, groups, args.out, args.int8_group))}
        with tempfile.TemporaryDirectory() as tmp:
            return {"rows": len(sweep(args.work, groups, Path(tmp), args.int8_group))}

    return run_step(step)


if __name__ == "__main__":
    raise SystemExit(main())
