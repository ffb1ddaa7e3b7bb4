#!/usr/bin/env bash
# The embedded Airflow: SQLite metadata DB and config under $RECFORGE_HOME/airflow, DAGs from ./dags.
#   infra/local/airflow.sh init                 create/migrate the metadata DB (idempotent)
#   infra/local/airflow.sh test DAG_ID DATE [-c CONF_JSON]   run one DAG run in-process (`airflow dags test`
#                                               through infra/local/dag_test_runner.py: the run starts now, and each
#                                               task's log is also written where the UI reads it;
#                                               infra/local/run-dag.sh adds the log file, a summary, the status)
#   infra/local/airflow.sh start|ui             start api-server + scheduler (LocalExecutor) + dag-processor +
#                                               triggerer on 127.0.0.1 unless running, wait until healthy
#   infra/local/airflow.sh stop [SERVICE...]    stop them (all, or the ones named)
#   infra/local/airflow.sh chain DATE [-c CONF_JSON]   the nightly chain through the scheduler (`make run`): start
#                                               what is not running, trigger nightly_retrain for DATE, follow the
#                                               asset-triggered DAGs (recforge.tools.embedded_chain), then stop
#                                               and re-pause what this command started
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
# The executor that suits one machine: the LocalExecutor, one task process per core at most (mapped tasks that
# must run alone say so: max_active_tis_per_dagrun=1); one API server worker (it serves the UI and the tasks'
# execution API); the tasks reach that API on 127.0.0.1 at the configured port.
export AIRFLOW__CORE__EXECUTOR=${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-$(nproc)}
export AIRFLOW__API__WORKERS=${AIRFLOW__API__WORKERS:-1}
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT/execution/}
# MovieLens has no partition for yesterday: the embedded nightly runs when triggered (make run), not on its cron
export RECFORGE_NIGHTLY_SCHEDULE=${RECFORGE_NIGHTLY_SCHEDULE:-none}
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
  start|ui)
    for svc in $services; do
      pidfile="$AIRFLOW_HOME/$svc.pid"
      if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then continue; fi
      # task logs are files under base_log_folder that the api-server reads itself: no log server (Airflow's
      # serve-logs would listen on every interface)
      case $svc in scheduler|triggerer) args=(--skip-serve-logs) ;; *) args=() ;; esac
      # the scheduler imports the pipeline's libraries before it forks the LocalExecutor's workers (see the file)
      if [ "$svc" = scheduler ]; then cmd=(python "$here/infra/local/airflow_scheduler.py"); else cmd=(airflow "$svc"); fi
      # own session: `stop` signals the service's whole process group (uvicorn workers, executor workers, tasks)
      setsid nohup "${cmd[@]}" "${args[@]}" >"$AIRFLOW_HOME/$svc.log" 2>&1 &
      echo $! >"$pidfile"
    done
    url="http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT"
    healthy=0
    for _ in $(seq 1 180); do
      curl -fsS --max-time 2 "$url/api/v2/monitor/health" >/dev/null 2>&1 && { healthy=1; break; }
      sleep 1
    done
    if [ $healthy = 0 ]; then
      echo "error: the Airflow API server did not answer at $url in 180 s; its log ($AIRFLOW_HOME/api-server.log):" >&2
      tail -20 "$AIRFLOW_HOME/api-server.log" >&2
      exit 1
    fi
    echo "Airflow UI:  $url  (user admin; its generated password is in" \
         "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated)"
    ;;
  stop)
    shift; [ $# -gt 0 ] || set -- $services
    # each service's process group (started in a session of its own): TERM to all, 30 s to finish, then KILL
    groups=()
    for svc in "$@"; do
      pidfile="$AIRFLOW_HOME/$svc.pid"
      [ -f "$pidfile" ] || continue
      group=$(cat "$pidfile")
      kill -TERM -- "-$group" 2>/dev/null && groups+=("$group")
      rm -f "$pidfile"
    done
    for _ in $(seq 1 60); do
      alive=0
      for group in "${groups[@]}"; do kill -0 -- "-$group" 2>/dev/null && alive=1; done
      [ $alive = 1 ] || break
      sleep 0.5
    done
    for group in "${groups[@]}"; do kill -KILL -- "-$group" 2>/dev/null || true; done
    echo "Airflow services stopped: $*"
    ;;
  chain)
    shift; [ $# -ge 1 ] || { echo "usage: $0 chain DATE [-c CONF_JSON]" >&2; exit 2; }
    date=$1 conf="{}"; shift
    [ "${1:-}" != "-c" ] || conf=${2:-"{}"}
    started=()
    for svc in $services; do
      pidfile="$AIRFLOW_HOME/$svc.pid"
      [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || started+=("$svc")
    done
    after=()
    if [ ${#started[@]} -gt 0 ]; then
      after=(--pause-after --fail-leftovers)
      trap '"$0" stop "${started[@]}" >/dev/null' EXIT
    fi
    "$0" start >/dev/null
    python -m recforge.tools.embedded_chain --date "$date" --conf "$conf" "${after[@]}"
    ;;
  "") echo "usage: $0 init|test|start|ui|stop|chain|<airflow args>" >&2; exit 2 ;;
  *) exec airflow "$@" ;;
esac
