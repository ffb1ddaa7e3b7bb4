"""`make bench`: RecForge's served variants against a plain PyTorch baseline, side by side on this machine.

Per model family of the latest nightly run (and its compress_and_validate results):

* **baseline** -- the trained fp32 model in PyTorch eager, one query at a time: a single worker runs each
  whole query as one forward (no batching, no scheduling), with the torch thread count (1 or all cores) that gives
  the higher median LBT in the rounds;
* **RecForge** -- the parity-passing variant with the highest latency-bounded throughput (LBT) on
  cpu-onnxruntime among a short list (the compress summary's fastest passing variants), each profiled with
  ``recforge.pipeline.profiling.targets.profile_variant`` (hill-climbed sub-batch size and intra-op threads);

both driven by the DeepRecSys open-loop load generator (Poisson arrivals, lognormal(5.1, 0.2) items per query)
on the same real test rows. Reported: p95 latency of both at the same offered loads (``load_fractions`` of the
baseline's median LBT; the headline ``load_fraction``, 50%) and their ratios, the LBT ratio, both test AUCs (from
the compress summary), and the measured items/s at the LBT against this machine's roofline
(``recforge.tools.hw_limits``: measured peak fp32/int8 GEMM rate and memory bandwidth; FLOPs = 2 x MACs per item,
bytes = embedding rows gathered + MLP weights per sub-batch).

Then the synthetic DeepRecSys-scale models (``recforge.models.synthetic``: RMC1/2/3 with Zipf ids and lognormal
pooling, tables scaled by ``table_rows_scale``): latency against batch size, LBT and table memory of the ONNX export
(fp32, INT8 MLPs) and of the TorchScript models with fused embedding bags (``synthetic_fused``: fp32, INT8 MLPs,
int8/int4 tables, both), against the physical limit (measured gather rate and GEMM peaks).

The table is printed and written as JSON + markdown under ``$RECFORGE_HOME/bench/``, and logged to MLflow
(experiment ``recforge-bench``) when the tracking server answers.

The comparison runs in interleaved rounds (baseline, RecForge, baseline, ...: LBTs first, then p95 at the loads
they fix, ``rounds``); every ratio is the median over the rounds with an order-statistic interval, and the output
ends with one ``bench: family=F path=inprocess ...`` line per family (``bench_line``;
``python -m recforge.tools.bench.compare A.txt B.txt`` gives the spread between two runs).

The modules: ``config`` (BenchConfig), ``nightly`` (the nightly run, its summaries and variants), ``load_targets``
(baseline and ONNX targets), ``lbt`` (LBT searches and profiling with retries), ``roofline`` (work per item, limits),
``rounds`` (interleaved rounds and their summary; their intervals: ``recforge.core.intervals``),
``apparatus_share`` (the load generator's share of each query's latency), ``family`` (one family), ``synthetic``
(RMC1-3 and their INT8 variant), ``report`` (markdown, files), ``bench_line`` (the machine-readable lines),
``compare`` (two runs' spread), ``mlflow_log``, ``quiet`` (silencing the ONNX exporter), ``run`` (the whole
benchmark), ``cli`` (``python -m recforge.tools.bench --help``). This package exports the main public names.
"""

from recforge.tools.bench.config import FAMILIES, BenchConfig
from recforge.tools.bench.family import bench_family
from recforge.tools.bench.mlflow_log import EXPERIMENT, bench_metrics, log_to_mlflow, tracking_server_reachable
from recforge.tools.bench.nightly import FamilyRun, find_family_runs, shortlist
from recforge.tools.bench.report import format_markdown, write_outputs
from recforge.tools.bench.roofline import ELEMENT_BYTES, roofline, work_per_item
from recforge.tools.bench.run import run_bench
from recforge.tools.bench.synthetic import bench_synthetic, quantize_mlps_int8

__all__ = [
    "ELEMENT_BYTES", "EXPERIMENT", "FAMILIES", "BenchConfig", "FamilyRun", "bench_family", "bench_metrics",
    "bench_synthetic", "find_family_runs", "format_markdown", "log_to_mlflow", "quantize_mlps_int8", "roofline",
    "run_bench", "shortlist", "tracking_server_reachable", "work_per_item", "write_outputs",
]
