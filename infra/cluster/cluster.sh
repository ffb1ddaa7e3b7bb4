#!/usr/bin/env bash
# The distributed mode on this machine (docs/cluster.md): PostgreSQL 15 (Airflow metadata + MLflow backend store),
# Redis (Celery broker), MLflow with proxied artifacts, Airflow's API server, scheduler, DAG processor and triggerer
# with the CeleryExecutor, two Celery workers (worker2 alone serves the profiling queue, one task at a time).
# Everything on 127.0.0.1 with generated passwords; state under $RECFORGE_HOME/cluster.
#   infra/cluster/cluster.sh up [--config '{"airflow_port": 8091}']   start what is not running, wait for health
#                                  (config keys: ports, task_heartbeat_timeout_s, dag_params, max_retry_delay_s)
#   infra/cluster/cluster.sh down                                     stop everything (idempotent)
#   infra/cluster/cluster.sh status                                   one line per service; 1 unless all healthy
#   infra/cluster/cluster.sh chain --date YYYY-MM-DD [--conf JSON]    nightly_retrain -> ... -> register_models
#                                                                     through the cluster's scheduler
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
venv=${RECFORGE_VENV:-$here/.venv}
export RECFORGE_HOME=${RECFORGE_HOME:-$here/.recforge}
export GX_ANALYTICS_ENABLED=False MLFLOW_DISABLE_TELEMETRY=true
case "${1:-}" in
  up|down|status) exec "$venv/bin/python" -m recforge.tools.cluster "$@" ;;
  chain) shift; exec "$venv/bin/python" -m recforge.tools.cluster.chain "$@" ;;
  *) echo "usage: $0 up|down|status|chain ... (see the header of $0)" >&2; exit 2 ;;
esac
