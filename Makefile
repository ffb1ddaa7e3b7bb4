# RecForge — `make help` lists the targets. Two commands on a fresh machine: `make setup && make run`.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export RECFORGE_HOME ?= $(CURDIR)/.recforge
export MLFLOW_PORT ?= 5000
export MLFLOW_TRACKING_URI ?= http://127.0.0.1:$(MLFLOW_PORT)
export GX_ANALYTICS_ENABLED := False
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
# Logical date of `make run`: default = last day of the data. Override: make run DATE=1998-03-01
DATE ?=
CONF ?= {}
# Runs one DAG through Airflow, keeps its log in $(RECFORGE_HOME)/<dag>-<date>.log, prints the gist (--help)
RUN_DAG := infra/local/run-dag.sh

.PHONY: help setup run nightly compress profile register ui ui-stop mlflow-up mlflow-down test test-fast lint lock clean k8s-manifests bench test-triton fleet-up fleet-down fleet-status fleet-traffic rollout rollout-history bench-fleet fleet-perf fleet-load bench-faults bench-apparatus bench-elastic

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed ## Create .venv (pinned), install HAProxy (Debian), fetch + verify MovieLens-100K, init the Airflow DB
	infra/local/system-packages.sh
	infra/local/perf-analyzer.sh
	$(PY) -m recforge.pipeline.data.ingest --fetch-only
	infra/local/airflow.sh init

run: setup mlflow-up ## The nightly chain through Airflow's scheduler (LocalExecutor): nightly -> compress -> profile -> register from the Assets (DATE=, CONF= of nightly)
	@date=$${DATE:-$$($(PY) -m recforge.pipeline.data.ingest --print-last-day)}; \
	$(PY) -m recforge.pipeline.training.nightly check --date "$$date" --conf '$(CONF)' >/dev/null; \
	status=0; infra/local/airflow.sh chain "$$date" -c '$(CONF)' || status=$$?; \
	$(PY) -m recforge.pipeline.training.nightly report --date "$$date" || true; \
	[ $$status -ne 0 ] || { $(PY) -m recforge.pipeline.profiling.cli report && \
	                        $(PY) -m recforge.pipeline.registry.stage show --history 5; }; exit $$status

nightly: setup mlflow-up ## Run one nightly_retrain DAG run in-process (airflow dags test; DATE=YYYY-MM-DD, CONF='{json}')
	@date=$${DATE:-$$($(PY) -m recforge.pipeline.data.ingest --print-last-day)}; \
	$(PY) -m recforge.pipeline.training.nightly check --date "$$date" --conf '$(CONF)' >/dev/null; \
	status=0; $(RUN_DAG) nightly_retrain "$$date" -c '$(CONF)' || status=$$?; \
	$(PY) -m recforge.pipeline.training.nightly report --date "$$date"; exit $$status

compress: setup mlflow-up ## Run compress_and_validate on the latest nightly run's candidates (CONF='{json}')
	@$(RUN_DAG) compress_and_validate "$(DATE)" -c '$(CONF)'

profile: setup mlflow-up ## Profile the latest validated variants per hardware target: LBT, plots, Pareto front (CONF='{json}')
	@status=0; $(RUN_DAG) profile_variants "$(DATE)" -c '$(CONF)' || status=$$?; \
	[ $$status -ne 0 ] || $(PY) -m recforge.pipeline.profiling.cli report; exit $$status

# `make bench` overrides, e.g. BENCH_CONF='{"families":["dlrm"],"synthetic":[],"point_duration_s":0.5}' (recforge.tools.bench)
BENCH_CONF ?= {}
bench: setup ## Benchmark: RecForge's best variant vs PyTorch eager per family in interleaved rounds (median [interval]), roofline, synthetic RMC1-3 (BENCH_CONF='{json}')
	$(PY) -m recforge.tools.bench --config '$(BENCH_CONF)'

# `make bench-fleet` overrides, e.g. FLEET_BENCH_CONF='{"point_duration_s": 3, "max_steps": 8}' (recforge.tools.fleet_bench)
FLEET_BENCH_CONF ?= {}
bench-fleet: setup mlflow-up ## Served path, one Triton node on its own CPU (client and balancer on another): champion + generated config vs fp32 + Triton's default, interleaved rounds (FLEET_FAMILY=, FLEET_BENCH_CONF=)
	$(PY) -m recforge.tools.fleet_bench --family $(FLEET_FAMILY) --target $(FLEET_TARGET) --config '$(FLEET_BENCH_CONF)'

# `make bench-elastic` overrides, e.g. ELASTIC_CONF='{"minutes": 6, "runs": 2}' (recforge.tools.elastic_bench)
ELASTIC_CONF ?= {}
bench-elastic: setup mlflow-up ## Live fleet, one trace under static peak/mean, HPA's law and RecForge's controller: SLO windows, node-seconds, plots (FLEET_FAMILY=, ELASTIC_CONF=)
	$(PY) -m recforge.tools.elastic_bench --family $(FLEET_FAMILY) --target $(FLEET_TARGET) --config '$(ELASTIC_CONF)'

# `make bench-faults` overrides, e.g. FAULTS_CONF='{"faults": ["kill9", "sigstop"], "repeats": 5}' (recforge.tools.fault_bench)
FAULTS_CONF ?= {}
bench-faults: setup mlflow-up ## Fault figures of a supervised 2-node fleet under load: kill -9, SIGSTOP, queue fill, HAProxy kill/reload (FAULTS_CONF=)
	$(PY) -m recforge.tools.fault_bench --family $(FLEET_FAMILY) --target $(FLEET_TARGET) --config '$(FAULTS_CONF)'

# `make bench-apparatus` overrides, e.g. APPARATUS_CONF='{"queries": 5000, "sub_batch": 64}' (recforge.tools.apparatus)
APPARATUS_CONF ?= {}
bench-apparatus: $(VENV)/.installed ## The load generator's own ceiling against a null target on separate CPU sets, vs the rates it is used for (APPARATUS_CONF=)
	$(PY) -m recforge.tools.apparatus --config '$(APPARATUS_CONF)'

register: setup mlflow-up ## Register the best profiled variant per (family, target) in MLflow and propose rollouts (CONF='{json}')
	@status=0; $(RUN_DAG) register_models "$(DATE)" -c '$(CONF)' || status=$$?; \
	$(PY) -m recforge.pipeline.registry.stage show --history 5; exit $$status

mlflow-up: ## Start the MLflow tracking server on 127.0.0.1:5000 (MLFLOW_PORT) unless one is running
	@if [ "$$MLFLOW_TRACKING_URI" = "http://127.0.0.1:$(MLFLOW_PORT)" ]; then infra/local/mlflow.sh start; \
	else echo "using MLflow at $$MLFLOW_TRACKING_URI"; fi

mlflow-down: ## Stop the embedded MLflow server
	infra/local/mlflow.sh stop

ui: setup mlflow-up ## Start the Airflow UI and MLflow UI on 127.0.0.1 and print their addresses
	infra/local/airflow.sh ui
	@echo "MLflow UI:   $$MLFLOW_TRACKING_URI (model-training view: the links below)"
	@$(PY) -m recforge.pipeline.training.tracking | sed 's/^/  /'

ui-stop: ## Stop the Airflow UI services (MLflow: make mlflow-down)
	infra/local/airflow.sh stop

test: setup ## Run every test: unit, integration (MLflow, HAProxy, Airflow), triton, e2e, perf
	$(PY) -m pytest

test-fast: ## Run the unit tier only: no server, no clock (-m unit)
	$(PY) -m pytest -m unit

test-triton: ## Run the triton tier: every test that starts a real tritonserver on 127.0.0.1 (-m triton)
	$(PY) -m pytest -m triton

lint: ## Lint with ruff, and check the layer contracts with import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

lock: ## Re-resolve the pinned environment into requirements.lock (after changing pyproject.toml)
	rm -rf /tmp/recforge-lock && $(PYTHON_BIN) -m venv /tmp/recforge-lock
	/tmp/recforge-lock/bin/pip install -q -e ".[dev]"
	{ head -2 requirements.lock; /tmp/recforge-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

k8s-manifests: $(VENV)/.installed ## Generate Kubernetes manifests for the Triton fleet, Airflow and MLflow
	$(PY) -m recforge.serving.k8s --config infra/k8s/deploy.example.json --out infra/k8s/generated

# Local Triton fleet: FLEET_NODES tritonserver nodes behind HAProxy on 127.0.0.1:FLEET_PORT (state: $(RECFORGE_HOME)/fleet)
FLEET_NODES ?= 2
FLEET_PORT ?= 8100
FLEET_FAMILY ?= dlrm
FLEET_TARGET ?= cpu-triton

FLEET_CONTROLLER ?= 1
fleet-up: $(VENV)/.installed mlflow-up ## Start the Triton fleet + HAProxy + elastic controller (FLEET_NODES=2, FLEET_CONTROLLER=0: none): registry champion, else newest nightly model
	@$(PY) -m recforge.serving.fleet up --nodes $(FLEET_NODES) --port $(FLEET_PORT) --family $(FLEET_FAMILY) --target $(FLEET_TARGET) $(if $(filter 0,$(FLEET_CONTROLLER)),--no-controller)

# make rollout MODEL=recforge-dlrm TARGET=cpu-triton [VERSION=3 | VERSION=champion-cpu-triton] [CONF='{"canary_duration_s": 60}']
MODEL ?= recforge-$(FLEET_FAMILY)
TARGET ?= $(FLEET_TARGET)
VERSION ?=
rollout: $(VENV)/.installed mlflow-up ## Roll a registered version out to the running fleet (rollout DAG): canary, gate, promote or roll back
	@conf=$$($(PY) -c 'import json, sys; d = json.loads(sys.argv[4] or "{}"); d.update(model=sys.argv[1], target=sys.argv[2], version=sys.argv[3]); print(json.dumps(d))' "$(MODEL)" "$(TARGET)" "$(VERSION)" '$(CONF)'); \
	echo "rollout $$conf"; \
	status=0; $(RUN_DAG) rollout "$$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" -c "$$conf" || status=$$?; \
	$(PY) -m recforge.serving.rollout history --model "$(MODEL)" --last 1; exit $$status

rollout-history: $(VENV)/.installed ## Past rollouts with their outcome and figures (MODEL= to filter)
	@$(PY) -m recforge.serving.rollout history $(if $(filter command line,$(origin MODEL)),--model "$(MODEL)")

fleet-down: ## Stop every process of the local fleet (idempotent, also leftovers of a stale state)
	@$(PY) -m recforge.serving.fleet down

fleet-status: ## The fleet's nodes, models, versions, HAProxy view and the controller's state (last tick, last decisions)
	@$(PY) -m recforge.serving.fleet status

fleet-traffic: $(VENV)/.installed mlflow-up ## Record what the fleet served (SINCE=ISO time) as a traffic profile in MLflow: the next night's profiling load
	@$(PY) -m recforge.serving.elastic.traffic record $(if $(SINCE),--since "$(SINCE)")

# make fleet-perf RATE=40 BATCH=16 [DURATION=30]: Triton's perf_analyzer through the balancer (recforge.tools.perf_fleet)
RATE ?= 20
REPEATS ?= 1
BATCH ?= 8
DURATION ?= 15
fleet-perf: $(VENV)/.installed ## Triton's perf_analyzer through the fleet's balancer: Poisson RATE= requests/s of BATCH= rows
	@infra/local/perf-analyzer.sh
	@$(PY) -m recforge.tools.perf_fleet --rate $(RATE) --batch $(BATCH) --duration $(DURATION) --repeats $(REPEATS)

# make fleet-load RATE=40 DURATION=60 [SIZES=lognormal:4.2,0.4] [SUB_BATCH=256]: query-size mixes through the balancer
SIZES ?= lognormal
SUB_BATCH ?= 256
fleet-load: $(VENV)/.installed ## The DeepRecSys load generator through the fleet's balancer: Poisson RATE= queries/s of SIZES= items for DURATION= s
	@$(PY) -m recforge.tools.fleet_load --rate $(RATE) --duration $(DURATION) --sizes '$(SIZES)' --sub-batch $(SUB_BATCH)

clean: mlflow-down ## Stop services (fleet, Airflow UI, MLflow) and delete local state (.recforge: data, MLflow, Airflow DB)
	-infra/local/airflow.sh stop
	-[ -x $(PY) ] && $(PY) -m recforge.serving.fleet down >/dev/null
	rm -rf $(RECFORGE_HOME)

# The distributed mode on this machine (docs/cluster.md): PostgreSQL, Redis, MLflow (proxied artifacts), Airflow with the
# CeleryExecutor and two Celery workers, all on 127.0.0.1; state under $(RECFORGE_HOME)/cluster.
# make cluster-up CLUSTER_CONF='{"airflow_port": 8091}' (ports: recforge.tools.cluster.settings.ClusterConfig)
CLUSTER_CONF ?= {}
.PHONY: cluster-up cluster-down cluster-status chain
cluster-up: setup ## Start the distributed mode: PostgreSQL, Redis, MLflow, Airflow (CeleryExecutor) + 2 Celery workers; idempotent
	@infra/cluster/cluster.sh up --config '$(CLUSTER_CONF)'

cluster-down: ## Stop every service of the distributed mode (idempotent; its state stays in .recforge/cluster)
	@infra/cluster/cluster.sh down

cluster-status: ## One line per service of the distributed mode: healthy/down, address, pid, log
	@infra/cluster/cluster.sh status

chain: ## The nightly chain through the cluster's scheduler for DATE= (CONF= of nightly): per-DAG state and wall time
	@date=$${DATE:-$$($(PY) -m recforge.pipeline.data.ingest --print-last-day)}; \
	infra/cluster/cluster.sh chain --date "$$date" --conf '$(CONF)'
