"""The Celery config of the cluster's workers (``[celery] celery_config_options``): Airflow's default config, and
each task in a fresh scratch folder deleted when it ends (recforge.tools.cluster.task_scratch's signal handlers,
connected when Airflow imports this module to build its Celery app)."""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import task_postrun, task_prerun

from recforge.tools.cluster.task_scratch import delete_task_scratch, open_task_scratch

CELERY_CONFIG = DEFAULT_CELERY_CONFIG

task_prerun.connect(open_task_scratch, weak=False)
task_postrun.connect(delete_task_scratch, weak=False)
