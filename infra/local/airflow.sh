#!/usr/bin/env bash
# The embedded Airflow: SQLite metadata DB and config under $RECFORGE_HOME/airflow, DAGs from ./dags.
#   infra/local/airflow.sh init                 create/migrate the metadata DB (idempotent)
#   infra/local/airflow.sh test DAG_ID DATE [-c CONF_JSON]   run one DAG run in-process (`airflow dags test`
#                                               through infra/local/dag_test_runner.py: the run starts now, and each
#                                               task's log is also written where the UI reads it;
#                                               infra/local/run-dag.sh adds the log file, a summary, the status)
#   infra/local/airflow.sh ui|stop              start/stop api-server + scheduler + dag-processor + triggerer on
#                                               127.0.0.1
#   infra/local/airflow.sh CMD...               any other airflow command with this environment
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
home=${RECFORGE_HOME:-$here/.recforge}
venv=${RECFORGE_VENV:-$here/.venv}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$home/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=${AIRFLOW__CORE__DAGS_FOLDER:-$here/dags}
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}
export AIRFLOW__API__HOST=${AIRFLOW_HOST:-127.0.0.1}
export AIRFLOW__API__PORT=${AIRFLOW_PORT:-8080}
export AIRFLOW__LOGGING__LOGGING_LEVEL=${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}
export GX_ANALYTICS_ENABLED=False MLFLOW_DISABLE_TELEMETRY=true
export PATH="$venv/bin:$PATH"
mkdir -p "$AIRFLOW_HOME"
# the triggerer runs deferred tasks and sensors; the UI reports it unhealthy when it is not running
services="api-server scheduler dag-processor triggerer"

case "${1:-}" in
  init)
    # migrate once per locked environment: `make run` calls setup before every stage, and a no-op `airflow db
    # migrate` still costs seconds of imports; the stamp is the lock file's hash, so a new Airflow pin migrates again
    stamp="$AIRFLOW_HOME/.migrated" want=$(sha256sum "$here/requirements.lock" | cut -d' ' -f1)
    if [ ! -f "$AIRFLOW_HOME/airflow.db" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
      airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
      echo "$want" >"$stamp"
    fi
    echo "Airflow metadata DB ready: $AIRFLOW_HOME/airflow.db"
    ;;
  test)
    shift; exec python "$here/infra/local/dag_test_runner.py" "$@"
    ;;
  ui)
    for svc in $services; do
      pidfile="$AIRFLOW_HOME/$svc.pid"
      if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then continue; fi
      # task logs are files under base_log_folder that the api-server reads itself: no log server (Airflow's
      # serve-logs would listen on every interface)
      case $svc in scheduler|triggerer) args=(--skip-serve-logs) ;; *) args=() ;; esac
      nohup airflow "$svc" "${args[@]}" >"$AIRFLOW_HOME/$svc.log" 2>&1 &
      echo $! >"$pidfile"
    done
    url="http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT"
    for _ in $(seq 1 120); do curl -fsS --max-time 2 "$url/api/v2/monitor/health" >/dev/null 2>&1 && break; sleep 1; done
    echo "Airflow UI:  $url  (user admin; its generated password is in" \
         "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"
    ;;
  stop)
    for svc in $services; do
      pidfile="$AIRFLOW_HOME/$svc.pid"
      if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        pkill -TERM -P "$(cat "$pidfile")" 2>/dev/null || true; kill "$(cat "$pidfile")" || true
      fi
      rm -f "$pidfile"
    done
    echo "Airflow services stopped"
    ;;
  "") echo "usage: $0 init|test|ui|stop|<airflow args>" >&2; exit 2 ;;
  *) exec airflow "$@" ;;
esac
