"""The distributed mode on one machine: PostgreSQL, Redis, MLflow with proxied artifacts, Airflow's scheduler, DAG
processor, triggerer and API server with the CeleryExecutor, and two Celery workers (``infra/cluster/cluster.sh``,
``make cluster-up``); and the nightly chain run through its scheduler (``make chain``). See docs/cluster.md."""
