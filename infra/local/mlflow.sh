#!/usr/bin/env bash
# Start/stop the embedded MLflow tracking server: SQLite backend store + local artifact root,
# bound to 127.0.0.1. `start` is a no-op when a server already answers on the port.
#   infra/local/mlflow.sh start|stop|status
# Env: RECFORGE_HOME (state folder), MLFLOW_PORT (default 5000), MLFLOW_HOST (default 127.0.0.1).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
home=${RECFORGE_HOME:-$here/.recforge}
host=${MLFLOW_HOST:-127.0.0.1}
port=${MLFLOW_PORT:-5000}
venv=${RECFORGE_VENV:-$here/.venv}
state=$home/mlflow
pidfile=$state/server.pid
url="http://$host:$port"

healthy() { curl -fsS --max-time 2 "$url/health" >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if healthy; then echo "MLflow already running at $url"; exit 0; fi
    mkdir -p "$state/artifacts"
    nohup "$venv/bin/mlflow" server \
      --host "$host" --port "$port" --workers 1 \
      --backend-store-uri "sqlite:///$state/mlflow.db" \
      --artifacts-destination "$state/artifacts" \
      >"$state/server.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 120); do
      if healthy; then echo "MLflow started at $url (log: $state/server.log)"; exit 0; fi
      if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then break; fi
      sleep 0.5
    done
    echo "error: MLflow server did not become healthy at $url; last log lines:" >&2
    tail -n 20 "$state/server.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      pkill -TERM -P "$(cat "$pidfile")" 2>/dev/null || true
      kill "$(cat "$pidfile")"; rm -f "$pidfile"; echo "MLflow stopped"
    else
      echo "MLflow not running (no live pid in $pidfile)"
    fi
    ;;
  status)
    if healthy; then echo "MLflow running at $url"; else echo "MLflow not running at $url"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
