"""This machine's physical limits, measured, and the items/s they allow a model: a roofline for `make bench`.

* :func:`peak_gemm_fp32`: a large square ``torch.matmul`` on all cores (FLOP/s = 2·n³ / time, best of repeats).
* :func:`peak_gemm_int8`: onnxruntime's ``MatMulInteger`` (uint8 × int8 -> int32, the kernel dynamic INT8
  quantization runs) on the same shape, as int8 ops/s.
* :func:`memory_bandwidth`: a STREAM-like triad ``a = b + s·c`` over arrays far larger than the caches, with
  torch on all cores (bytes = 3 arrays / time), and a numpy copy (bytes = 2 arrays / time); the triad is the
  bandwidth the roofline uses.
* :func:`item_limit`: items/s = min(peak_ops / ops_per_item, bandwidth / bytes_per_item), the roofline bound
  of a model whose item costs ``ops_per_item`` arithmetic operations and ``bytes_per_item`` bytes of memory
  traffic. Streaming bandwidth is an upper bound for the random row gathers of embedding lookups, so the bound
  is optimistic for gather-bound models; it is a ceiling, not a prediction.

CLI: ``python -m recforge.tools.hw_limits [--size 2048] [--mib 128]`` prints the measurements as JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recforge.core.cli import run_step
from recforge.core.errors import ConfigError
from recforge.core.hw import cpu_count, cpu_model


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def peak_ops(self, precision: str) -> float:
        """The arithmetic peak a variant of ``precision`` can use: int8 GEMM for int8 variants, fp32 otherwise
        (fp16 has no fast path on this CPU: onnxruntime computes it in fp32 or slower)."""
        return self.int8_ops if precision.startswith("int8") else self.fp32_flops


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def measure(gemm_size: int = 2048, array_mib: int = 128, repeats: int = 5) -> HardwareLimits:
    """All three peaks of this machine (a few seconds)."""
    if not 64 <= gemm_size <= 16384 or not 8 <= array_mib <= 8192:
        raise ConfigError(f"gemm_size must be in [64, 16384] and array_mib in [8, 8192], got {gemm_size}, {array_mib}")
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    vnni = " + VNNI" if {"avx512_vnni", "avx_vnni"} & flags else ""
    bandwidth = memory_bandwidth(array_mib, repeats)
    return HardwareLimits(
        device=f"{cpu_model()}, {cpu_count()} cores, {isa}{vnni}", cores=cpu_count(),
        fp32_flops=peak_gemm_fp32(gemm_size, repeats), int8_ops=peak_gemm_int8(gemm_size, repeats),
        bandwidth_bytes_per_s=bandwidth["triad_bytes_per_s"], copy_bytes_per_s=bandwidth["copy_bytes_per_s"],
        gemm_size=gemm_size, array_mib=array_mib)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recforge.tools.hw_limits", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="GEMM size n (n×n×n)")
    parser.add_argument("--mib", type=int, default=128, help="MiB per array of the bandwidth test")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    return run_step(lambda: measure(args.size, args.mib, args.repeats).to_dict())


if __name__ == "__main__":
    sys.exit(main())
