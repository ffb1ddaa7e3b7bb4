"""Precisions of a base's ONNX file, made with onnxruntime: INT8 dynamic, INT8 static (QDQ), FP16.

* ``int8_dynamic``: ``quantize_dynamic`` of MatMul (Gemm is rewritten to MatMul + Add first: ORT's dynamic
  quantizer has no Gemm) and Gather, so the embedding tables are stored as uint8.
* ``int8_static``: ``quantize_static`` in QDQ format, MinMax-calibrated on the most recent training rows,
  per-channel weights; MatMul/Gemm and Gather, with float MatMul/Gemm outputs (no 8-bit rounding of the logit).
* Both int8 precisions: 7-bit weights by default (``reduce_range``: x86 without VNNI saturates otherwise), and
  the layers fed by the raw dense features keep float activations with int8 weights behind a DequantizeLinear
  (the dense features drift out of the training range over time: past counts only grow).
* ``fp16``: float16 weights and compute, float32 graph inputs/outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.core.errors import ConfigError
from recforge.inference.onnx import numpy_inputs
from recforge.pipeline.compression.config import PRECISION_TABLE, PRECISIONS, CompressConfig, CompressionError
from recforge.pipeline.compression.onnx_graph import (
    activation_matmuls,
    float_input_layers,
    gemm_to_matmul,
    int8_weight_only,
    load_onnx,
)

if TYPE_CHECKING:
    from recforge.pipeline.data.features import Split

log = logging.getLogger(__name__)


def preprocess(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime's quantization pre-processing (shape inference + basic optimisation); a copy on failure."""
    import shutil

    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as err:  # noqa: BLE001 - ORT raises many types; quantization can still go on
        log.warning("quantization pre-processing of %s failed (%s); quantizing it as exported", src, err)
        shutil.copyfile(src, dst)
    return Path(dst)


def quantize_dynamic_int8(src: str | Path, dst: str | Path, cfg: CompressConfig, tables: bool = True
                          ) -> dict[str, Any]:
    """Dynamic INT8 of MatMul/Gemm weights (int8) and embedding tables (Gather, uint8; float with ``tables=False``,
    for :mod:`.table_quant` to quantize rowwise); returns details.

    Layers fed by the raw dense features (``cfg.float_input_layers``) keep float activations and get int8
    weights behind a DequantizeLinear (``int8_weight_only``).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    try:
        preprocess(src, prepared)
        gemms = gemm_to_matmul(prepared, prepared)
        float_layers = float_input_layers(prepared) if cfg.float_input_layers else []
        quantize_dynamic(str(prepared), str(dst), op_types_to_quantize=["MatMul", "Gather"] if tables else ["MatMul"],
                         nodes_to_exclude=float_layers, per_channel=False, reduce_range=cfg.reduce_range,
                         weight_type=QuantType.QInt8)
        int8_weight_only(dst, dst, float_layers)
    finally:
        prepared.unlink(missing_ok=True)
    return {"bits": 8, "ops": ["MatMul", "Gemm->MatMul"] + ["Gather"] * tables, "gemms_rewritten": gemms,
            "per_channel": False, "reduce_range": cfg.reduce_range, "weight_type": "int8",
            "embedding_type": "uint8" if tables else "float32", "activations": "uint8, quantized at run time per batch",
            "weight_only_layers": float_layers}


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over model inputs, in batches."""

    def __init__(self, inputs: Mapping[str, np.ndarray], batch_size: int = 256):
        rows = len(next(iter(inputs.values())))
        self.batches = [{k: np.ascontiguousarray(v[s:s + batch_size]) for k, v in inputs.items()}
                        for s in range(0, rows, batch_size)]
        self._iter = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self.batches)


def quantize_static_int8(src: str | Path, dst: str | Path, calibration: Mapping[str, np.ndarray],
                         cfg: CompressConfig, tables: bool = True) -> dict[str, Any]:
    """Static INT8 (QDQ) of MatMul/Gemm and Gather (not Gather with ``tables=False``), MinMax-calibrated on
    ``calibration`` (model inputs).

    Float activations: layers fed by the raw dense features (``cfg.float_input_layers``; their weights are
    int8 behind a DequantizeLinear, see ``int8_weight_only``), matmuls of two
    activations, and the *outputs* of MatMul/Gemm (ORT then fuses to QGemm / MatMulIntegerToFloat with a float
    output; a uint8 output would round the final logit to 1/255 of its range and add ties to the ranking).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    ops = ["MatMul", "Gemm", "Gather"] if tables else ["MatMul", "Gemm"]
    dst = Path(dst)
    prepared = preprocess(src, dst.with_name(dst.stem + ".prep.onnx"))
    try:
        float_layers = float_input_layers(prepared) if cfg.float_input_layers else []
        excluded = float_layers + activation_matmuls(prepared)
        rows = len(next(iter(calibration.values())))
        log.info("calibrating int8_static on %d rows (%s)", rows, Path(src).name)
        quantize_static(
            str(prepared), str(dst), _CalibrationReader(calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        )
        int8_weight_only(dst, dst, float_layers)
    finally:
        prepared.unlink(missing_ok=True)
    return {"bits": 8, "format": "QDQ", "ops": ops, "per_channel": cfg.per_channel,
            "reduce_range": cfg.reduce_range, "weight_type": "int8", "activation_type": "uint8",
            "calibration_rows": rows, "calibration": "MinMax", "weight_only_layers": float_layers,
            "float_nodes": excluded, "float_outputs": ["MatMul", "Gemm"]}


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """float16 weights and compute, float32 graph inputs/outputs (Casts at the graph boundary)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(load_onnx(src), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"bits": 16, "io": "float32"}


def quantize(precision: str, src: str | Path, dst: str | Path, train: Split, cfg: CompressConfig,
             tables: bool = True) -> dict[str, Any]:
    """Convert the fp32 ONNX file ``src`` to ``precision`` at ``dst``; returns the conversion's details.

    int8_static is calibrated on the last ``cfg.calibration_rows`` rows of the training split ``train``. With
    ``tables=False`` the int8 precisions leave the embedding tables in float32 (for :mod:`.table_quant`).
    """
    # Looked up at call time (module globals), so each one can be replaced on its own, e.g. in tests.
    if precision == "int8_dynamic":
        return quantize_dynamic_int8(src, dst, cfg, tables)
    if precision == "int8_static":
        calibration = {k: v[-cfg.calibration_rows:] for k, v in numpy_inputs(train).items()}
        return quantize_static_int8(src, dst, calibration, cfg, tables)
    if precision == "fp16" and tables:
        return convert_fp16(src, dst)
    if precision in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not made here with tables={tables}; the quantized-table "
                          "precisions are recforge.pipeline.compression.table_quant.convert's")
    raise ConfigError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")


def check_weight_dtypes(precision: str, dtypes: Mapping[str, Mapping[str, int]]) -> None:
    """CompressionError unless the embedding tables were really converted to the precision's storage type."""
    expected = PRECISION_TABLE[precision].embedding_dtypes
    left = {dtype: n for dtype, n in dtypes["embedding"].items() if dtype not in expected}
    if left:
        raise CompressionError(f"{precision} left embedding tables unconverted: {left}")
