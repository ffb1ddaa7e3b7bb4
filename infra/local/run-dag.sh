#!/usr/bin/env bash
# Run one DAG run through the embedded Airflow (`infra/local/airflow.sh test`), keep its whole log, show the gist.
usage() {
  cat <<'EOF'
usage: infra/local/run-dag.sh [-h] DAG_ID [DATE] [-c CONF_JSON]

Runs one DAG run of DAG_ID in-process (`airflow dags test`, through infra/local/airflow.sh) for the logical
date DATE (YYYY-MM-DD or an ISO timestamp; empty or omitted: the last day of the data), with the params
CONF_JSON (default {}).

The run is recorded in the Airflow metadata DB like any other: `make ui` shows it, each task's log in its Logs
tab. The whole Airflow log goes to $RECFORGE_HOME/<DAG_ID>-<DATE>.log. While it runs, a short summary is printed:
each task that ends ("done: <task> [map index]"), the DAG's key lines (failed data checks, parity verdicts,
profiled variants, registrations, rollout steps) and error lines. Exits with the DAG run's exit status.

  infra/local/run-dag.sh nightly_retrain 1998-04-22 -c '{"families": ["din"]}'
EOF
}
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
home=${RECFORGE_HOME:-$here/.recforge}
venv=${RECFORGE_VENV:-$here/.venv}

dag="" date="" conf="{}" positional=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    -c|--conf) [ $# -ge 2 ] || { echo "error: $1 needs a JSON object" >&2; exit 2; }; conf=${2:-"{}"}; shift 2 ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) positional=$((positional + 1))
       case $positional in 1) dag=$1 ;; 2) date=$1 ;; *) echo "error: unexpected argument $1" >&2; exit 2 ;; esac
       shift ;;
  esac
done
[ -n "$dag" ] || { usage >&2; exit 2; }
if [ -z "$date" ]; then
  date=$("$venv/bin/python" -m recforge.pipeline.data.ingest --print-last-day)
fi

# The key lines of each DAG, besides task ends and errors (extended regular expressions).
case "$dag" in
  nightly_retrain) key='^\s+- |data checks failed|Data Docs:' ;;
  compress_and_validate) key=': (PASS|REJECT)|passed:|DataError' ;;
  profile_variants) key='\] (plan [a-z_]+:|profiled |skipped )' ;;
  register_models) key='\bregistered |\balias |stays a candidate|proposed rollout:|not proposed:|not promoted:|failed:' ;;
  rollout) key='\] rollout |\] canary |RolloutFailed|rollout (promoted|noop): ' ;;
  *) key='$^' ;;
esac
task_end='\[DAG TEST\] end task'
errors='^error|Error:'

mkdir -p "$home"
log="$home/$dag-$(printf '%s' "$date" | tr -d ':' | sed 's/+0000$//').log"
echo "$dag for $date (MLflow: ${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000}; Airflow log: $log)"

set +e  # the DAG's status is reported, not fatal: the summary and the log path come first
"$here/infra/local/airflow.sh" test "$dag" "$date" -c "$conf" 2>&1 | tee "$log" \
  | grep --line-buffered -E "$task_end|$key|$errors" \
  | sed -u -E \
      -e 's/.*\[DAG TEST\] end task task_id=([A-Za-z0-9_]+) map_index=-1.*/  done: \1/' \
      -e 's/.*\[DAG TEST\] end task task_id=([A-Za-z0-9_]+) map_index=([0-9]+).*/  done: \1 [\2]/' \
      -e 's/^[^][]*\[[a-z ]+\] /  /' \
      -e 's/ +\[[A-Za-z0-9_.]+\] loc=.*$//' \
  | uniq
status=${PIPESTATUS[0]}
set -e
echo "log: $log"
exit "$status"
