#!/usr/bin/env bash
# Debian packages RecForge needs outside the venv: HAProxy (the local fleet's load balancer), Chromium and its
# chromedriver (headless browser tests of the Airflow and MLflow UIs, tests/ui/).
# Idempotent: installs only what is missing. Needs root (or sudo) the first time.
set -euo pipefail
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
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
haproxy -v | head -1
