"""The embedded Airflow's scheduler with the pipeline's libraries imported first (``infra/local/airflow.sh start``).

The LocalExecutor forks its worker processes from the scheduler, and Airflow 3's task supervisor forks every task
process from a worker: what the scheduler has imported, each task starts with. Importing torch, MLflow,
great-expectations, onnx(runtime), pandas/pyarrow, scikit-learn and torch-pruning costs a fresh process 4-8 s on this
machine; without this, each of the chain's ~40 tasks would pay it (``airflow dags test`` paid it once per DAG).

Only third-party libraries are preloaded, never ``recforge`` itself, so a task always runs the code on disk. Importing
them starts no OpenMP pool and opens no connection (torch's pool starts at the first parallel operator; pyarrow's
jemalloc thread is fork-aware), so forking afterwards is as safe as forking the bare scheduler. Set
``RECFORGE_SCHEDULER_PRELOAD=0`` to start the plain ``airflow scheduler``.

    python infra/local/airflow_scheduler.py [airflow scheduler options]
"""

from __future__ import annotations

import importlib
import os
import sys

PRELOAD = ("torch", "mlflow", "onnx", "onnxruntime", "great_expectations", "pandas", "pyarrow", "sklearn",
           "torch_pruning")


def main() -> int:
    if os.environ.get("RECFORGE_SCHEDULER_PRELOAD", "1") != "0":
        for name in PRELOAD:
            importlib.import_module(name)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", "scheduler", *sys.argv[1:]]
    return airflow_main()


if __name__ == "__main__":
    sys.exit(main())
