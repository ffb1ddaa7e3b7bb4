"""MLflow tag names: every ``recforge.*`` tag the pipeline writes or reads, defined once.

Runs (experiment ``recforge-nightly``): the nightly parent run, one training run per family, one run per
compressed variant. Registered model versions carry the variant's identity, its profile and its blessing.
"""

from __future__ import annotations

PREFIX = "recforge."

# Runs: what a run is and where its inputs came from
STAGE = "recforge.stage"  # nightly | train | compress | variant | profile | bench | traffic
KIND = "recforge.kind"  # kind of run within a stage (e.g. "baseline", "bench")
FAMILY = "recforge.family"
VARIANT = "recforge.variant"
LOGICAL_DATE = "recforge.logical_date"
DATA_DAY = "recforge.data_day"
DATA_FINGERPRINT = "recforge.data_fingerprint"
AIRFLOW_RUN_ID = "recforge.airflow_run_id"
DAG_ID = "recforge.dag_id"
DATA_CHECKS = "recforge.data_checks"  # passed | warning | failed (nightly parent run)
FAILURE = "recforge.failure"  # one line: why a run failed
MODELS = "recforge.models"  # families trained by a nightly run
TEST_AUC = "recforge.test_auc"
ONNX_MODEL_URI = "recforge.onnx_model_uri"
MODEL_FORMAT = "recforge.model_format"  # onnx | torchscript (recforge.models.formats): variant runs, versions
PARITY = "recforge.parity"  # passed | rejected (variant runs)
REJECTED_BECAUSE = "recforge.rejected_because"  # a rejected variant's reasons, one line each (variant runs)
PROFILED_TARGETS = "recforge.profiled_targets"  # targets the latest profiling renewed (training run)
PROFILE_SKIPPED = "recforge.profile_skipped"
TRAFFIC_RUN_ID = "recforge.traffic_run_id"  # the traffic profile a variant's latest profiles were measured under

# Traffic profiles (experiment recforge-traffic, recforge.contracts.traffic): one run per recorded window
TRAFFIC_RECORDED_FROM = "recforge.traffic.recorded_from"  # ISO time, UTC
TRAFFIC_RECORDED_TO = "recforge.traffic.recorded_to"  # ISO time, UTC: how recent the traffic is (max age)
TRAFFIC_SOURCE = "recforge.traffic.source"  # what it was recorded from (the balancer's request log)

# Registered model versions: identity and provenance
TARGET = "recforge.target"
TARGET_KIND = "recforge.target_kind"
TARGET_DEVICE = "recforge.target_device"
IDENTITY = "recforge.identity"  # <variant run id>/<target>: one version per (variant run, target)
SOURCE_RUN_ID = "recforge.source_run_id"
ONNX_ARTIFACT = "recforge.onnx_artifact"
ONNX_SHA256 = "recforge.onnx_sha256"
PROFILE_URI = "recforge.profile_uri"
PROFILE_HOST = "recforge.profile_host"
PROFILE_MEASURED_AT = "recforge.profile_measured_at"
PROFILE_CODE_VERSION = "recforge.profile_code_version"
REGISTERED_BY_DAG_RUN = "recforge.registered_by_dag_run"
SEARCH_STRATEGY = "recforge.search_strategy"
BEST_KNOBS = "recforge.best_knobs"
# ... and the figures registration judges by
LBT_QPS = "recforge.lbt_qps"
P95_TARGET_MS = "recforge.p95_target_ms"  # the SLO the profile was measured against
PROFILE_APPARATUS = "recforge.profile_apparatus"  # where the load generator ran: LBTs of different ones do not compare
LBT_CAPPED = "recforge.lbt_capped"
ITEMS_PER_S = "recforge.items_per_s"
AUC = "recforge.auc"
LOGLOSS = "recforge.logloss"
DELTA_AUC = "recforge.delta_auc"
SIZE_BYTES = "recforge.size_bytes"
BLESSING_PREFIX = "recforge.blessing."  # recforge.blessing.<field> of registry.policy.Blessing

# Registered models: promotion and rollout history
ALIAS_HISTORY = "recforge.alias_history"  # JSON for programs; people read the table in the model's description
ROLLED_BACK = "recforge.rolled_back"
ROLLOUT_PROPOSAL = "recforge.rollout_proposal"  # the proposed `make rollout ...` command
ROLLOUT_PROPOSAL_FLEET = "recforge.rollout_proposal_fleet"  # the fleet command to run before it
ROLLOUT_LAST = "recforge.rollout.last"
ROLLOUT_PREFIX = "recforge.rollout."  # recforge.rollout.<outcome> on a version a rollout judged

# MLflow's own tags that RecForge sets (names as mlflow.utils.mlflow_tags and the MLflow 3 UI read them)
EXPERIMENT_KIND = "mlflow.experimentKind"  # model training vs GenAI (MLflow 3.17's UI also needs the link's
# ?workflowType=machine_learning to open on the runs: recforge.pipeline.training.tracking.experiment_url)
MODEL_TRAINING_EXPERIMENT = "custom_model_development"
PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"
PRIMARY_METRIC_GREATER_IS_BETTER = "mlflow.experiment.primaryMetric.greaterIsBetter"
RUN_NOTE = "mlflow.note.content"  # the run's (or experiment's) description, markdown
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
GIT_COMMIT = "mlflow.source.git.commit"


def partition_tags(partition: dict[str, str]) -> dict[str, str]:
    """``{"data_day": ...}`` -> ``{"recforge.data_day": ...}``: a data partition's identity as tags."""
    return {PREFIX + key: value for key, value in partition.items()}
