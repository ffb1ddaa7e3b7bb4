"""This machine's physical limits, measured, and the items/s they allow a model: a roofline for `make bench`.

* :func:`peak_gemm_fp32`: a large square ``torch.matmul`` on all cores (FLOP/s = 2·n³ / time, best of repeats).
* :func:`peak_gemm_int8`: onnxruntime's ``MatMulInteger`` (uint8 × int8 -> int32, the kernel dynamic INT8
  quantization runs) on the same shape, as int8 ops/s.
* :func:`memory_bandwidth`: a STREAM-like triad ``a = b + s·c`` over arrays far larger than the caches, with
  torch on all cores (bytes = 3 arrays / time), and a numpy copy (bytes = 2 arrays / time); the triad is the
  bandwidth the roofline uses.
* :func:`peak_gemm_int8_fbgemm`: the same shape through FBGEMM's dynamic INT8 Linear (what a TorchScript model's
  INT8 MLP runs); the int8 peak of the machine is the faster of the two.
* :func:`gather_rate`: rows/s of random embedding-row gathers, the work of a DeepRecSys-scale model: FBGEMM's
  fused bag kernel (the fastest gather this machine has), one single-threaded stream per core, sum-pooling bags
  of ids drawn as the synthetic models draw them (Zipf(1.05) over the rows, ranks scattered by
  ``recforge.models.synthetic.rank_to_row``) from a table of ``gather_mib`` MiB of fp32 rows (512 MiB by default,
  ≥ 16× any L3 of this class of CPU), stored as fp32, int8 or int4 rows (the same rows, fewer bytes), at the
  embedding dims the models use (32 and 64).
* :func:`item_limit`: items/s = min(peak_ops / ops_per_item, bandwidth / bytes_per_item), the classic roofline
  of a model whose item costs ``ops_per_item`` operations and ``bytes_per_item`` bytes of streaming traffic.
  Streaming bandwidth overstates random row gathers (a 128-byte row costs a DRAM latency, not 128 bytes of
  a stream), so for lookup-bound models :func:`lookup_item_limit` is the physical limit: the item's time is
  max(lookups / measured gather rate, 2·MACs / GEMM peak), the two overlapping at best.

CLI: ``python -m recforge.tools.hw_limits [--size 2048] [--mib 128] [--gather-mib 512]`` prints the
measurements as JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recforge.core.cli import run_step
from recforge.core.errors import ConfigError
from recforge.core.hw import cpu_count, cpu_model
from recforge.models.embedding_bags import TABLE_PRECISIONS, FusedEmbeddingBags, check_precision, packed_row_bytes
from recforge.models.synthetic import DEFAULT_ZIPF_ALPHA, rank_to_row, zipf_ranks

GATHER_DIMS = (32, 64)  # the embedding dims of the synthetic RMC models
GATHER_LOOKUPS_PER_BAG = 80  # RMC1's mean pooling
GATHER_BAGS = 2048  # bags per timed call: 164K lookups, far more rows than the caches hold


def _best_seconds(call, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        call()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def peak_gemm_fp32(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """FLOP/s of an n×n×n fp32 ``torch.matmul`` on ``threads`` threads (default: all cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_count())
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.empty(n, n)
        seconds = _best_seconds(lambda: torch.matmul(a, b, out=out), repeats)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * n**3 / seconds


def _matmul_integer_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", "k"]),
         helper.make_tensor_value_info("b", TensorProto.INT8, ["k", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["m", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def peak_gemm_int8(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """int8 ops/s (2·n³ / time) of onnxruntime's ``MatMulInteger`` (uint8 × int8 -> int32) on all cores."""
    import tempfile

    import onnxruntime as ort

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    b = rng.integers(-128, 128, (n, n), dtype=np.int8)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_count()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(_matmul_integer_model(Path(tmp) / "mm.onnx")), options,
                                       providers=["CPUExecutionProvider"])
        seconds = _best_seconds(lambda: session.run(None, {"a": a, "b": b}), repeats)
    return 2.0 * n**3 / seconds


def peak_gemm_int8_fbgemm(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """int8 ops/s (2·n³ / time) of FBGEMM's dynamic INT8 Linear (``torch.ao``: int8 weights, activations
    quantized per call) on an [n, n] input, on all cores."""
    import warnings

    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_count())
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            layer = DynamicLinear.from_float(_float_linear(n))
        x = torch.randn(n, n, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            seconds = _best_seconds(lambda: layer(x), repeats)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * n**3 / seconds


def _float_linear(n: int):
    import torch

    layer = torch.nn.Linear(n, n)
    layer.qconfig = torch.ao.quantization.default_dynamic_qconfig
    return layer


def stored_gather_table(precision: str, rows: int, dim: int):
    """A stored table of ``rows`` rows in ``precision``'s layout (recforge.models.embedding_bags), filled with
    constant codes and a valid scale and bias: the values do not change a gather's time, and filling is fast."""
    import torch

    if precision == "fp32":
        return torch.full((rows, dim), 0.01)
    data_bytes = packed_row_bytes(precision, dim) - (8 if precision == "int8" else 4)
    table = torch.full((rows, packed_row_bytes(precision, dim)), 0x55, dtype=torch.uint8)
    scale_bias = torch.tensor([0.01, -0.5], dtype=torch.float32 if precision == "int8" else torch.float16)
    table[:, data_bytes:] = scale_bias.view(torch.uint8)
    return table


def gather_rate(precision: str, dim: int, gather_mib: int = 512, alpha: float = DEFAULT_ZIPF_ALPHA,
                repeats: int = 5, threads: int | None = None, bags: int = GATHER_BAGS,
                lookups_per_bag: int = GATHER_LOOKUPS_PER_BAG) -> float:
    """Rows/s the fused bag kernel of ``precision`` pools on ``threads`` cores (default: all): that many
    independent streams, one intra-op thread each, as the serving workers run (one OpenMP team spread over busy
    cores waits for its slowest thread). Each stream pools ``bags`` bags of ``lookups_per_bag`` Zipf(``alpha``)
    ids (a fresh draw per timed call, so no call finds its tail rows cached by the previous one) from a table of
    ``gather_mib`` MiB of fp32 rows of ``dim`` values, stored in ``precision``. Best of ``repeats``."""
    import torch

    check_precision(precision)
    streams = threads or cpu_count()
    rows = max(1000, gather_mib * 2**20 // (4 * dim))
    rng = np.random.default_rng(0)
    draws = [[torch.from_numpy(rank_to_row(zipf_ranks(rows, bags * lookups_per_bag, alpha, rng), rows))
              for _ in range(streams)] for _ in range(repeats + 1)]
    lengths = torch.full((bags, 1), lookups_per_bag, dtype=torch.int64)
    bag = FusedEmbeddingBags(stored_gather_table(precision, rows, dim), [rows], precision, prepacked=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(streams) as pool:
            list(pool.map(lambda ids: bag(ids, lengths), draws[0]))  # warm-up: touches the table's pages
            best = math.inf
            for round_ids in draws[1:]:
                start = time.perf_counter()
                list(pool.map(lambda ids: bag(ids, lengths), round_ids))
                best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return streams * bags * lookups_per_bag / best


def gather_key(precision: str, dim: int) -> str:
    return f"{precision}/{dim}"


def measure_gather_rates(dims: Sequence[int] = GATHER_DIMS, gather_mib: int = 512,
                         precisions: Sequence[str] = TABLE_PRECISIONS, repeats: int = 5) -> dict[str, float]:
    """{"<precision>/<dim>": rows/s} of :func:`gather_rate` for every precision and dim."""
    return {gather_key(p, d): gather_rate(p, d, gather_mib, repeats=repeats) for d in dims for p in precisions}


def memory_bandwidth(mib: int = 128, repeats: int = 5, threads: int | None = None) -> dict[str, float]:
    """Bytes/s of a triad ``a = b + 3·c`` (torch, all cores; 3 arrays of ``mib`` MiB moved) and of a numpy copy
    (2 arrays moved). Arrays of 128 MiB are ~4× the L3 of the largest current CPUs' dies."""
    import torch

    n = mib * 2**20 // 4
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_count())
    try:
        a, b, c = torch.zeros(n), torch.ones(n), torch.full((n,), 2.0)
        triad = _best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
        if not torch.all(a[:: n // 16] == 7.0):  # the work really happened
            raise RuntimeError("triad produced wrong values")
    finally:
        torch.set_num_threads(previous)
    a = b = c = None  # free 3 x mib before the copy test
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    copy = _best_seconds(lambda: np.copyto(dst, src), repeats)
    return {"triad_bytes_per_s": 3 * 4 * n / triad, "copy_bytes_per_s": 2 * 4 * n / copy}


@dataclass(frozen=True)
class HardwareLimits:
    """Measured peaks of this machine (rates per second)."""

    device: str
    cores: int
    fp32_flops: float  # FLOP/s, torch.matmul
    int8_ops: float  # int8 ops/s, onnxruntime MatMulInteger
    bandwidth_bytes_per_s: float  # triad
    copy_bytes_per_s: float
    gemm_size: int
    array_mib: int
    int8_ops_fbgemm: float = 0.0  # int8 ops/s, FBGEMM dynamic INT8 Linear (torch)
    gather_rows_per_s: dict[str, float] = field(default_factory=dict)  # gather_key(precision, dim) -> rows/s
    gather_mib: int = 0  # fp32 MiB of the gather test's table
    gather_zipf_alpha: float = DEFAULT_ZIPF_ALPHA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def peak_ops(self, precision: str) -> float:
        """The arithmetic peak a variant of ``precision`` can use: int8 GEMM for int8 variants, fp32 otherwise
        (fp16 has no fast path on this CPU: onnxruntime computes it in fp32 or slower)."""
        return max(self.int8_ops, self.int8_ops_fbgemm) if precision.startswith("int8") else self.fp32_flops

    def gather_rate(self, precision: str, dim: int) -> float | None:
        """Measured rows/s of ``precision`` rows of ``dim`` values; None when that pair was not measured."""
        return self.gather_rows_per_s.get(gather_key(precision, dim))


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def measure(gemm_size: int = 2048, array_mib: int = 128, repeats: int = 5, gather_mib: int | None = None,
            gather_dims: Sequence[int] = GATHER_DIMS) -> HardwareLimits:
    """All the peaks of this machine (several seconds). The gather table is ``gather_mib`` MiB of fp32 rows,
    by default 4 × ``array_mib`` (512 MiB)."""
    gather_mib = gather_mib or 4 * array_mib
    if not 64 <= gemm_size <= 16384 or not 8 <= array_mib <= 8192 or not 8 <= gather_mib <= 16384:
        raise ConfigError(f"gemm_size must be in [64, 16384], array_mib in [8, 8192] and gather_mib in [8, 16384], "
                          f"got {gemm_size}, {array_mib}, {gather_mib}")
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    vnni = " + VNNI" if {"avx512_vnni", "avx_vnni"} & flags else ""
    bandwidth = memory_bandwidth(array_mib, repeats)
    return HardwareLimits(
        device=f"{cpu_model()}, {cpu_count()} cores, {isa}{vnni}", cores=cpu_count(),
        fp32_flops=peak_gemm_fp32(gemm_size, repeats), int8_ops=peak_gemm_int8(gemm_size, repeats),
        bandwidth_bytes_per_s=bandwidth["triad_bytes_per_s"], copy_bytes_per_s=bandwidth["copy_bytes_per_s"],
        gemm_size=gemm_size, array_mib=array_mib, int8_ops_fbgemm=peak_gemm_int8_fbgemm(gemm_size, repeats),
        gather_rows_per_s=measure_gather_rates(gather_dims, gather_mib, repeats=repeats), gather_mib=gather_mib)


def item_limit(ops_per_item: float, bytes_per_item: float, peak_ops: float, bandwidth: float) -> dict[str, Any]:
    """Roofline items/s: min(peak_ops / ops_per_item, bandwidth / bytes_per_item), and which bound binds."""
    if not (ops_per_item >= 0 and bytes_per_item >= 0 and ops_per_item + bytes_per_item > 0):
        raise ConfigError(f"ops_per_item and bytes_per_item must be >= 0, not both 0; got {ops_per_item}, "
                          f"{bytes_per_item}")
    if not (peak_ops > 0 and bandwidth > 0):
        raise ConfigError(f"peak_ops and bandwidth must be > 0, got {peak_ops}, {bandwidth}")
    compute = peak_ops / ops_per_item if ops_per_item else math.inf
    memory = bandwidth / bytes_per_item if bytes_per_item else math.inf
    return {"items_per_s": min(compute, memory), "compute_bound_items_per_s": compute,
            "memory_bound_items_per_s": memory, "bound": "compute" if compute <= memory else "memory",
            "ops_per_item": ops_per_item, "bytes_per_item": bytes_per_item}


def lookup_item_limit(lookups_per_item: float, gather_rows_per_s: float, ops_per_item: float,
                      peak_ops: float) -> dict[str, Any]:
    """The physical limit of a lookup-bound item: items/s = 1 / max(lookups / gather rate, ops / peak ops) (the
    gathers and the GEMMs overlapping perfectly at best), and which of the two binds ("gather" or "compute")."""
    if not (lookups_per_item >= 0 and ops_per_item >= 0 and lookups_per_item + ops_per_item > 0):
        raise ConfigError(f"lookups_per_item and ops_per_item must be >= 0, not both 0; got {lookups_per_item}, "
                          f"{ops_per_item}")
    if not (gather_rows_per_s > 0 and peak_ops > 0):
        raise ConfigError(f"gather_rows_per_s and peak_ops must be > 0, got {gather_rows_per_s}, {peak_ops}")
    lookup_s, compute_s = lookups_per_item / gather_rows_per_s, ops_per_item / peak_ops
    return {"items_per_s": 1.0 / max(lookup_s, compute_s),
            "gather_bound_items_per_s": 1.0 / lookup_s if lookup_s else math.inf,
            "compute_bound_items_per_s": 1.0 / compute_s if compute_s else math.inf,
            "bound": "gather" if lookup_s >= compute_s else "compute", "lookups_per_item": lookups_per_item,
            "ops_per_item": ops_per_item, "gather_rows_per_s": gather_rows_per_s, "peak_ops": peak_ops}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.hw_limits", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="GEMM size n (n×n×n)")
    parser.add_argument("--mib", type=int, default=128, help="MiB per array of the bandwidth test")
    parser.add_argument("--gather-mib", type=int, default=None,
                        help="fp32 MiB of the gather test's table (default 4 x --mib)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    return run_step(lambda: measure(args.size, args.mib, args.repeats, args.gather_mib).to_dict())


if __name__ == "__main__":
    sys.exit(main())
