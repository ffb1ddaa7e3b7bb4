"""Fabricated pipeline runs for the registry tests: real MLflow runs laid out the way the pipeline lays them out (a
nightly parent run, a family's training run, variant child runs with a real ONNX file under ``onnx/`` and
schema-valid profile documents under ``profile/<target>.json``), registered into their own registered models (a
unique name prefix)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from recforge.contracts import tags as T
from recforge.contracts.profile import validate_profile
from recforge.contracts.targets import CPU_ONNXRUNTIME, TARGETS
from recforge.pipeline.registry import stage
from recforge.pipeline.registry.policy import RegisterConfig, model_name

FAMILY = "dlrm"
CPU = CPU_ONNXRUNTIME  # the target most tests register for


def tiny_onnx(path: Path, weight: float) -> str:
    """A real 2-input logistic model (MatMul + Sigmoid); ``weight`` makes the file (and its SHA-256) unique."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[weight], [0.5]], dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["dense", "w"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["ctr"])],
        "tiny", [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", 2])],
        [helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["B", 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def profile_doc(*, variant: str, run_id: str, sha: str, target: str, lbt: float, auc: float,
                host: str = "bench-1", family: str = FAMILY) -> dict:
    kind = target if target in TARGETS else CPU_ONNXRUNTIME  # a name outside the vocabulary: an old profile
    doc = {
        "schema_version": 1, "model_family": family, "variant": variant, "variant_run_id": run_id,
        "onnx_sha256": sha,
        "target": {"name": target, "kind": kind, "device": "test CPU, 2 cores", "threads": 1},
        "load": {"arrival": "poisson", "distribution": "lognormal", "params": {"mu": 5.1, "sigma": 0.2},
                 "mean_items_per_query": 167.5, "sub_batch_policy": {"mode": "searched"}},
        "p95_target_ms": 25.0,
        "search": {"strategy": "hill_climb", "evaluations": [{"knobs": {"sub_batch": 64}, "lbt_qps": lbt}],
                   "best_knobs": {"sub_batch": 64}},
        "latency_bounded_throughput_qps": lbt, "items_per_s": lbt * 167.5,
        "curve": [{"offered_qps": max(lbt, 1.0), "achieved_qps": lbt, "p50_ms": 5.0, "p95_ms": 10.0,
                   "p99_ms": 12.0, "errors": 0}],
        "latency_vs_batch": [{"batch": 64, "ms": 1.0}],
        "accuracy": {"auc": auc, "delta_auc": -0.0005},
        "measured_at": "1998-04-23T03:00:00+00:00", "host": host, "code_version": "test",
    }
    validate_profile(doc)
    return doc


def one_variant(lbt: float, auc: float = 0.75, **extra) -> dict:
    return {"v": {"lbt": {CPU: lbt}, "auc": auc, **extra}}


class Pipeline:
    """Fabricates nightly runs in a real MLflow server, and registers them with one config."""

    def __init__(self, tmp_path: Path):
        import mlflow

        self.client = mlflow.MlflowClient()
        self.tmp = tmp_path
        self.experiment_id = self.client.create_experiment(os.environ["RECFORGE_EXPERIMENT"])
        self.cfg = RegisterConfig(model_prefix=f"t{uuid.uuid4().hex[:8]}-")
        self.model = model_name(FAMILY, self.cfg)
        self.nights = 0
        self.parent_run_id = ""  # the nightly parent run of the latest night

    def night(self, variants: dict[str, dict], day: str = "", *, family: str = FAMILY,
              same_night: bool = False) -> tuple[str, dict[str, str]]:
        """A nightly parent run (``same_night``: the latest one again), a training run of ``family`` and one variant
        run per entry of ``variants``:
        {name: {"lbt": {target: qps}, "auc": x, "size": bytes, "parity": "passed", "sha": override}}.
        Returns (training run id, {variant: variant run id})."""
        c = self.client
        if not same_night:
            self.nights += 1
            day = day or f"1998-04-{10 + self.nights:02d}"
            self.parent_run_id = c.create_run(self.experiment_id, run_name=f"nightly-{day}", tags={
                T.KIND: "nightly", T.LOGICAL_DATE: day, T.DATA_FINGERPRINT: f"fp-{day}",
                T.AIRFLOW_RUN_ID: f"scheduled__{day}", "mlflow.source.git.commit": "abc123"}).info.run_id
        day = day or f"1998-04-{10 + self.nights:02d}"
        parent = self.parent_run_id
        train = c.create_run(self.experiment_id, run_name=family, tags={
            T.FAMILY: family, T.STAGE: "train", "mlflow.parentRunId": parent}).info.run_id
        c.log_param(train, "data_day", day)
        c.log_param(train, "data_fingerprint", f"fp-{day}")
        run_ids = {}
        for i, (name, v) in enumerate(variants.items()):
            run_id = c.create_run(self.experiment_id, run_name=f"{family}/{name}", tags={
                T.STAGE: "compress", T.FAMILY: family, T.VARIANT: name,
                T.PARITY: v.get("parity", "passed"), "mlflow.parentRunId": train}).info.run_id
            folder = self.tmp / run_id
            folder.mkdir()
            sha = tiny_onnx(folder / f"model.{name}.onnx", weight=self.nights * 10 + i + 0.25)
            c.log_artifact(run_id, str(folder / f"model.{name}.onnx"), "onnx")
            c.log_metric(run_id, "size_bytes", v.get("size", 1000.0))
            c.log_metric(run_id, "auc", v["auc"])
            for target, lbt in v["lbt"].items():
                doc = profile_doc(variant=name, run_id=run_id, sha=v.get("sha", sha), target=target, lbt=lbt,
                                  auc=v["auc"], host=v.get("host", "bench-1"), family=family)
                c.log_dict(run_id, doc, f"profile/{target}.json")
            c.log_dict(run_id, {}, "profile/skipped.json")  # profile_variants writes it beside the profiles
            c.set_terminated(run_id)
            run_ids[name] = run_id
        c.log_dict(train, {"family": family}, "profile/summary.json")  # profile_variants' mark of a profiled family
        c.set_terminated(train)
        c.set_terminated(parent)
        return train, run_ids

    def register(self, train_run_id: str, dag_run_id: str = "", **overrides) -> dict:
        cfg = RegisterConfig.from_dict(self.cfg.to_dict() | overrides)
        return stage.register_family(train_run_id, cfg=cfg, dag_run_id=dag_run_id or f"run-{train_run_id[:6]}")

    def aliases(self, model: str = "") -> dict[str, str]:
        return dict(self.client.get_registered_model(model or self.model).aliases)

    def versions(self) -> list:
        return self.client.search_model_versions(f"name = '{self.model}'")
