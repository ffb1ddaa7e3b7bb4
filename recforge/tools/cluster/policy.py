"""The cluster's Airflow cluster policy: its DAG param defaults and its cap on retry delays (ClusterConfig's
``dag_params`` and ``max_retry_delay_s``), applied wherever Airflow parses a DAG file (the DAG processor, and each
worker before it runs a task), so a scheduled or asset-triggered run gets them as a triggered one would.

Airflow finds the policy through ``$AIRFLOW_HOME/config/airflow_local_settings.py``, a shim that ``install`` writes;
the policy reads ``cluster.json`` of the cluster named by ``RECFORGE_CLUSTER_ROOT`` at every parse.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from recforge.tools.cluster.settings import ClusterConfig, ClusterPaths, load_config

CLUSTER_ROOT_ENV = "RECFORGE_CLUSTER_ROOT"  # set in every Airflow process of the cluster (services.airflow_env)
LOCAL_SETTINGS = '''"""Written by recforge.tools.cluster.policy: the cluster's Airflow policy (docs/cluster.md)."""
from recforge.tools.cluster.policy import dag_policy, task_policy

__all__ = ["dag_policy", "task_policy"]
'''


def install(airflow_home: Path) -> Path:
    """Write the ``airflow_local_settings.py`` shim that makes Airflow load this policy; returns its path."""
    path = airflow_home / "config" / "airflow_local_settings.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != LOCAL_SETTINGS:
        path.write_text(LOCAL_SETTINGS)
    return path


def cluster_config() -> ClusterConfig | None:
    """The running cluster's config; None outside a cluster (the policy then changes nothing)."""
    root = os.environ.get(CLUSTER_ROOT_ENV)
    return load_config(ClusterPaths(Path(root))) if root else None


def apply_param_defaults(dag: Any, defaults: dict[str, Any]) -> None:
    """Give ``dag``'s params (and its tasks' copies of them) new default values, keeping each one's schema, so a
    value that breaks it is refused as a trigger's would be. A name the DAG does not declare is ignored."""
    from airflow.sdk import Param

    for name, value in defaults.items():
        if name not in dag.params:
            continue
        old = dag.params.get_param(name)
        new = Param(json.loads(json.dumps(value)), description=old.description, source=old.source, **old.schema)
        new.resolve()  # validate now: a bad cluster default fails the DAG's parse, naming the param
        dag.params[name] = new
        for task in dag.tasks:
            if name in task.params:
                task.params[name] = new


def dag_policy(dag: Any) -> None:
    """Airflow's DAG policy hook: the cluster's defaults for this DAG's params."""
    cfg = cluster_config()
    if cfg is not None and dag.dag_id in cfg.dag_params:
        apply_param_defaults(dag, cfg.dag_params[dag.dag_id])


def task_policy(task: Any) -> None:
    """Airflow's task policy hook: a retry waits at most the cluster's ``max_retry_delay_s``."""
    cfg = cluster_config()
    if cfg is None or cfg.max_retry_delay_s is None:
        return
    cap = timedelta(seconds=cfg.max_retry_delay_s)
    if task.retry_delay is None or task.retry_delay > cap:
        task.retry_delay = cap
