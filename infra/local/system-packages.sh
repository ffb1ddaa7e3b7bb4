#!/usr/bin/env bash
# Debian packages RecForge needs outside the venv: HAProxy (the local fleet's load balancer), Chromium and its
# chromedriver (headless browser tests of the Airflow and MLflow UIs, tests/ui/), PostgreSQL 15 and Redis (the
# distributed mode's metadata/backend store and Celery broker, infra/cluster/cluster.sh).
# Idempotent: installs only what is missing. Needs root (or sudo) the first time.
set -euo pipefail
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# infra/cluster runs its own PostgreSQL (the Debian 15 binaries) and redis-server processes
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Bootstrap 4 + jQuery: inlined into the Data Docs logged to MLflow (recforge/pipeline/datagate/docs_bundle.py)
[ -f /usr/share/javascript/bootstrap4/css/bootstrap.min.css ] || missing+=(libjs-bootstrap4)
[ -f /usr/share/javascript/jquery/jquery.min.js ] || missing+=(libjs-jquery)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged service on 0.0.0.0 defaults; RecForge runs its own haproxy processes.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet haproxy 2>/dev/null; then $SUDO systemctl stop haproxy || true; fi
if [ -f /run/haproxy.pid ]; then $SUDO kill "$(cat /run/haproxy.pid)" 2>/dev/null || true; fi
# the same for the packaged PostgreSQL cluster (port 5432) and Redis (6379, no password)
if command -v pg_ctlcluster >/dev/null 2>&1; then $SUDO pg_ctlcluster 15 main stop 2>/dev/null || true; fi
if [ -f /run/redis/redis-server.pid ]; then $SUDO kill "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true; fi
haproxy -v | head -1
