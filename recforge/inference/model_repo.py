"""Triton model repositories from one source of truth: an ONNX variant, its feature spec and a serving config.

:func:`write_model_repository` writes ``<out>/<model>/config.pbtxt`` and ``<out>/<model>/<version>/`` in one of
two flavours that share everything but the runtime lines:

* ``production``: ``platform: "onnxruntime_onnx"`` (Triton's onnxruntime backend, as in the NGC images) and
  ``<version>/model.onnx``;
* ``local``: ``backend: "python"``, ``<version>/model.onnx`` and ``<version>/model.py`` (from
  ``recforge/inference/triton_model.py.tmpl``), because the tritonserver of the nvidia-pytriton wheel has the python
  backend only. model.py reads the tensor names and dtypes from the config, checks the file's SHA-256 against
  the config before it loads anything, and runs each dynamic batch as one onnxruntime call.

Both carry the tensor contract of ``recforge.contracts.features`` (inputs ``sparse``/``genres``/``history`` INT64 and
``dense`` FP32, output ``probability``, dims without the batch dim; the model's ``[B]`` output is presented
as ``[B, 1]``), ``dynamic_batching`` (left out with ``ServingConfig(dynamic_batching=False)``),
``instance_group``, ``model_warmup`` and the expected SHA-256 of the ONNX file as the parameter ``onnx_sha256``.
Every serving value is written with a comment naming the measurement it came from (:class:`ServingConfig.sources`,
filled by :func:`serving_config_from_profile`).

:func:`verify_model_repository` checks each model file against its config's hash before anything is served;
:func:`parse_config_pbtxt` reads a config back (with Triton's own ModelConfig protobuf, so a field Triton would
reject is rejected here too).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from recforge.contracts.features import INPUT_NAMES, OUTPUT_NAME
from recforge.contracts.profile import validate_profile
from recforge.core.config import Annotated, Field, config_from_dict, typed_config
from recforge.core.errors import ConfigError
from recforge.core.hashing import sha256_file
from recforge.inference.loadgen import load_spec

TEMPLATE = Path(__file__).with_name("triton_model.py.tmpl")
FLAVOURS = ("local", "production")
INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
MAX_BATCH_SIZE = 1 << 16
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
SHA_PARAMETER = "onnx_sha256"
PROVENANCE_FILE = "provenance.json"  # beside config.pbtxt; Triton ignores files it does not know


BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]
PerInstance = Annotated[int, Field(ge=1, le=64)]


@typed_config
class ServingConfig:
    """The Triton serving settings of one model (the DeepRecSched / Triton search result).

    ``sources`` maps a field name to the measurement it came from; it becomes the comment of that value in
    config.pbtxt (fields without a source are marked as defaults)."""

    max_batch_size: BatchSize = 256
    preferred_batch_size: tuple[BatchSize, ...] = ()  # empty: no preference, dispatch what has arrived
    max_queue_delay_microseconds: Annotated[int, Field(ge=0, le=10**7)] = 100
    # requests waiting in the node's queue beyond which Triton rejects a new one at once (HTTP 503, which the
    # balancer retries on another node: it never ran); 0: no bound (Triton's default)
    max_queue_size: Annotated[int, Field(ge=0, le=10**6)] = 0
    instance_count: PerInstance = 1
    # False: no dynamic_batching block at all (Triton's default: each request runs on its own, as it arrives);
    # preferred_batch_size must then be empty and max_queue_delay_microseconds is not written
    dynamic_batching: bool = True
    instance_kind: Literal[INSTANCE_KINDS] = "KIND_CPU"
    threads_per_instance: PerInstance = 1  # onnxruntime intra-op threads of each instance
    warmup_batch_sizes: tuple[BatchSize, ...] = (1,)
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("preferred_batch_size", "warmup_batch_sizes"):
            sizes = getattr(self, key)
            if any(s > self.max_batch_size for s in sizes) or len(set(sizes)) != len(sizes):
                raise ConfigError(f"ServingConfig.{key} must be distinct integers in [1, max_batch_size "
                                  f"{self.max_batch_size}], got {sizes!r}")
        if not self.dynamic_batching and self.preferred_batch_size:
            raise ConfigError(f"ServingConfig.preferred_batch_size {self.preferred_batch_size!r} needs "
                              "dynamic_batching; set dynamic_batching true or leave preferred_batch_size empty")
        unknown = sorted(set(self.sources) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"ServingConfig.sources names unknown fields {unknown}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ServingConfig:
        return config_from_dict(cls, dict(d or {}))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sources"] = dict(self.sources)
        for key in ("preferred_batch_size", "warmup_batch_sizes"):
            out[key] = list(out[key])
        return out

    def source(self, key: str) -> str:
        return self.sources.get(key) or "default (not measured)"


# --------------------------------------------------------------------------------------------------------------
# From a profile


def serving_config_from_profile(profile: Mapping[str, Any] | str | Path, *, source: str | None = None,
                                max_batch_size: int | None = None) -> ServingConfig:
    """The serving config a profile document (``recforge/contracts/profile_schema.json``; a dict or a JSON file)
    argues for.

    * ``max_batch_size``: the one the profile ran with (``search.best_knobs.max_batch_size``, cpu-triton), else the
      largest request the client sends (``sub_batch``) or the largest preferred batch, whichever is larger
      (the ``max_batch_size`` argument overrides);
    * ``preferred_batch_size`` / ``max_queue_delay_microseconds`` / ``instance_count``: the Triton knobs of
      ``search.best_knobs`` (a cpu-triton profile); otherwise the workers of the profiled target become the
      instance count, with no preferred size and the default queue delay;
    * ``max_queue_size``: the requests that can still be served within the profile's p95 target behind the queue
      (target / latency of the largest measured request <= max_batch_size, times the instances; at least 2 per
      instance); 0 (no bound) without ``latency_vs_batch``;
    * ``threads_per_instance``: ``target.threads``;
    * ``warmup_batch_sizes``: 1 and max_batch_size.
    Each value's ``sources`` entry names the profile (file or run id), its LBT figure and the evaluation."""
    if not isinstance(profile, Mapping):
        path = Path(profile)
        try:
            profile = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"profile {path} cannot be read as JSON: {err}") from None
        source = source or str(path)
    validate_profile(profile)
    knobs = dict(profile["search"]["best_knobs"])
    target = profile["target"]
    lbt = profile["latency_bounded_throughput_qps"]
    where = (f"profile {source + ' ' if source else ''}(variant run {profile['variant_run_id']}, "
             f"{profile['model_family']}/{profile['variant']} on {target['name']} [{target['kind']}], "
             f"measured {profile['measured_at']})")
    lbt_text = (f"LBT {lbt:g} qps{' (capped)' if profile.get('lbt_capped') else ''} at p95 <= "
                f"{profile['p95_target_ms']:g} ms, best of {len(profile['search']['evaluations'])} knob settings "
                f"({profile['search']['strategy']})")
    sources: dict[str, str] = {}

    def knob(name: str) -> str:
        return f"search.best_knobs.{name}={json.dumps(knobs[name])} of {where}: {lbt_text}"

    preferred = tuple(sorted(int(b) for b in knobs.get("preferred_batch", ())))
    if "preferred_batch" in knobs:
        sources["preferred_batch_size"] = knob("preferred_batch")
    sub_batch = int(knobs.get("sub_batch", 0))
    if max_batch_size is None and "max_batch_size" in knobs:  # a cpu-triton profile measured with this one
        max_batch_size = int(knobs["max_batch_size"])
        sources["max_batch_size"] = knob("max_batch_size") + " (the Triton max_batch_size the search ran with)"
    elif max_batch_size is None:
        candidates = [b for b in (sub_batch, *preferred) if b]
        if not candidates:
            raise ConfigError(f"{where} has neither sub_batch nor preferred_batch in search.best_knobs; pass "
                              "max_batch_size")
        max_batch_size = max(candidates)
        sources["max_batch_size"] = (knob("sub_batch") if max_batch_size == sub_batch
                                     else knob("preferred_batch")) + " (largest request)"
    else:
        sources["max_batch_size"] = f"given explicitly (profile {where} suggested {max(sub_batch, *preferred, 1)})"
    queue_delay = 100
    if "queue_delay_us" in knobs:
        queue_delay = int(knobs["queue_delay_us"])
        sources["max_queue_delay_microseconds"] = knob("queue_delay_us")
    if "instances" in knobs:
        instances = int(knobs["instances"])
        sources["instance_count"] = knob("instances")
    elif "workers" in knobs or "workers" in target:
        instances = int(knobs.get("workers", target.get("workers", 1)))
        sources["instance_count"] = (f"{'search.best_knobs' if 'workers' in knobs else 'target'}.workers="
                                     f"{instances} (parallel sessions) of {where}: {lbt_text}")
    else:
        instances = 1
    threads = int(knobs.get("threads", target["threads"]))
    sources["threads_per_instance"] = f"target.threads={threads} of {where}: {lbt_text}"
    batch_ms = {row["batch"]: row["ms"] for row in profile.get("latency_vs_batch", [])}
    warmup = tuple(sorted({1, max_batch_size}))
    measured = ", ".join(f"{b}: {batch_ms[b]:.3g} ms" for b in warmup if b in batch_ms)
    sources["warmup_batch_sizes"] = "1 and max_batch_size" + (f" (single-request latency_vs_batch {measured})"
                                                               if measured else "")
    queue_size = 0
    full = [(b, ms) for b, ms in sorted(batch_ms.items()) if b <= max_batch_size and ms > 0]
    if full:  # a request that waits behind more than this misses the SLO anyway: reject it at once (503)
        batch, ms = full[-1]
        queue_size = max(2 * instances, math.floor(profile["p95_target_ms"] / ms * instances))
        sources["max_queue_size"] = (f"p95 target {profile['p95_target_ms']:g} ms / {ms:.3g} ms per request of "
                                     f"{batch} rows (latency_vs_batch) x {instances} instance(s), at least 2 per "
                                     f"instance: the requests that can still be served within the target, of {where}")
    # a GPU profile's instances run on the GPU; a hybrid profile's Triton side is its CPU part (the offloaded
    # queries need a second, GPU deployment, which the hybrid profile's gpu_threshold routes to)
    kind = "KIND_GPU" if target["kind"].startswith("gpu-") else "KIND_CPU"
    sources["instance_kind"] = f"target.kind={target['kind']} of {where}"
    return ServingConfig(max_batch_size=max_batch_size, preferred_batch_size=preferred,
                         max_queue_delay_microseconds=queue_delay, max_queue_size=queue_size,
                         instance_count=instances, instance_kind=kind,
                         threads_per_instance=threads, warmup_batch_sizes=warmup, sources=sources)


# --------------------------------------------------------------------------------------------------------------
# config.pbtxt


def tensor_contract(spec: Any) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """([(name, TYPE_*, dims without batch)] of the inputs, the same of the outputs) for a FeatureSpec."""
    spec = load_spec(spec)
    dims = {"sparse": spec.num_sparse, "genres": spec.genre_slots, "history": spec.history_length,
            "dense": spec.num_dense}
    dtypes = {"sparse": "TYPE_INT64", "genres": "TYPE_INT64", "history": "TYPE_INT64", "dense": "TYPE_FP32"}
    inputs = [(name, dtypes[name], [dims[name]]) for name in INPUT_NAMES]
    return inputs, [(OUTPUT_NAME, "TYPE_FP32", [1])]


def _comment(text: str) -> str:
    return " ".join(str(text).split())  # one line


def _string(value: str) -> str:
    return json.dumps(str(value))  # a valid protobuf text string literal for printable text


def render_config_pbtxt(*, model_name: str, spec: Any, serving_config: ServingConfig, flavour: str,
                        onnx_sha256: str, provenance: Mapping[str, Any] | None = None,
                        generated_at: str | None = None) -> str:
    """The config.pbtxt text (see the module docstring)."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    cfg = serving_config
    inputs, outputs = tensor_contract(spec)
    lines = [
        f"# Triton model configuration of {model_name} ({flavour} flavour), written by "
        "recforge.inference.model_repo.write_model_repository",
        f"# generated at {generated_at or dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
    ]
    for key, value in (provenance or {}).items():
        lines.append(f"# provenance {key}: {_comment(value if isinstance(value, str) else json.dumps(value))}")
    lines.append(f"name: {_string(model_name)}")
    if flavour == "production":
        lines += ['platform: "onnxruntime_onnx"  # Triton onnxruntime backend (NGC tritonserver images)',
                  'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "python"  # <version>/model.py runs model.onnx with onnxruntime (the nvidia-pytriton '
                  'tritonserver has the python backend only)']
    lines += [f"max_batch_size: {cfg.max_batch_size}  # {_comment(cfg.source('max_batch_size'))}", "input ["]
    for i, (name, dtype, dims) in enumerate(inputs):
        sep = "," if i < len(inputs) - 1 else ""
        lines.append(f"  {{ name: {_string(name)} data_type: {dtype} dims: [ {', '.join(map(str, dims))} ] }}{sep}")
    lines += ["]", "output ["]
    for i, (name, dtype, dims) in enumerate(outputs):
        sep = "," if i < len(outputs) - 1 else ""
        lines.append(f"  {{ name: {_string(name)} data_type: {dtype} dims: [ {', '.join(map(str, dims))} ] "
                     f"reshape: {{ shape: [ ] }} }}{sep}  # the model's [B] output, served as [B, 1]")
    lines.append("]")
    if cfg.dynamic_batching:
        lines.append("dynamic_batching {")
        if cfg.preferred_batch_size:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, cfg.preferred_batch_size))} ]  "
                         f"# {_comment(cfg.source('preferred_batch_size'))}")
        else:
            lines.append(f"  # preferred_batch_size: none (dispatch whatever has arrived): "
                         f"{_comment(cfg.source('preferred_batch_size'))}")
        lines.append(f"  max_queue_delay_microseconds: {cfg.max_queue_delay_microseconds}  "
                     f"# {_comment(cfg.source('max_queue_delay_microseconds'))}")
        if cfg.max_queue_size:
            lines.append(f"  default_queue_policy {{ max_queue_size: {cfg.max_queue_size} }}  "
                         f"# {_comment(cfg.source('max_queue_size'))}")
        lines.append("}")
    else:
        lines.append(f"# no dynamic_batching: each request runs on its own as it arrives (Triton's default): "
                     f"{_comment(cfg.source('dynamic_batching'))}")
    lines += ["instance_group ["]
    lines.append(f"  {{ count: {cfg.instance_count} kind: {cfg.instance_kind} }}  "
                 f"# {_comment(cfg.source('instance_count'))}")
    lines.append("]")
    parameters = [
        (SHA_PARAMETER, onnx_sha256, "checked before loading (model.py, verify_model_repository)"),
        ("intra_op_thread_count", str(cfg.threads_per_instance), cfg.source("threads_per_instance")),
        ("inter_op_thread_count", "1", "sequential execution: one op at a time per instance"),
    ]
    for key, value, why in parameters:
        lines.append(f"parameters {{ key: {_string(key)} value: {{ string_value: {_string(value)} }} }}  "
                     f"# {_comment(why)}")
    lines.append(f"# warm-up batch sizes: {_comment(cfg.source('warmup_batch_sizes'))}")
    lines.append("model_warmup [")
    for i, batch in enumerate(cfg.warmup_batch_sizes):
        lines.append(f"  {{ name: \"warmup_batch_{batch}\" batch_size: {batch}")
        for name, dtype, dims in inputs:
            # ids 0 (unknown/padding) are valid for every vocabulary; random ids would not be
            data = "zero_data: true" if dtype == "TYPE_INT64" else "random_data: true"
            lines.append(f"    inputs {{ key: {_string(name)} value: {{ data_type: {dtype} "
                         f"dims: [ {', '.join(map(str, dims))} ] {data} }} }}")
        lines.append("  }" + ("," if i < len(cfg.warmup_batch_sizes) - 1 else ""))
    lines.append("]")
    return "\n".join(lines) + "\n"


def _message_to_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as plain Python: ints stay ints (MessageToDict turns int64 into strings), enums are
    their names, maps are dicts, repeated fields lists."""
    out: dict[str, Any] = {}
    for fd, value in message.ListFields():
        def convert(v: Any, fd: Any = fd) -> Any:
            if fd.type == fd.TYPE_MESSAGE:
                return _message_to_dict(v)
            if fd.type == fd.TYPE_ENUM:
                return fd.enum_type.values_by_number[v].name
            return v

        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: (_message_to_dict(v) if value_fd.type == value_fd.TYPE_MESSAGE else v)
                            for k, v in value.items()}
        elif fd.label == fd.LABEL_REPEATED:
            out[fd.name] = [convert(v) for v in value]
        else:
            out[fd.name] = convert(value)
    return out


def parse_config_pbtxt(text_or_path: str | Path) -> dict[str, Any]:
    """A config.pbtxt (text, or a path to one) as a dict, parsed with Triton's ModelConfig protobuf: unknown
    fields or bad values raise ConfigError as Triton would refuse them. Maps (``parameters``, warm-up
    ``inputs``) are dicts; e.g. ``cfg["parameters"]["onnx_sha256"]["string_value"]``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    if isinstance(text_or_path, Path) or (isinstance(text_or_path, str) and "\n" not in text_or_path
                                          and text_or_path.endswith(".pbtxt")):
        path = Path(text_or_path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path} cannot be read: {err.strerror or err}") from None
        where = str(path)
    else:
        text, where = str(text_or_path), "config.pbtxt text"
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ConfigError(f"{where} is not a valid Triton model config: {err}") from None
    return _message_to_dict(message)


def config_parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """{key: string_value} of a parsed config's ``parameters``."""
    return {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


# --------------------------------------------------------------------------------------------------------------
# The repository


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_model_repository(out_dir: str | Path, *, model_name: str, onnx_path: str | Path, spec: Any,
                           serving_config: ServingConfig | Mapping[str, Any], flavour: str = "local",
                           version: int = 1, expected_sha256: str | None = None,
                           provenance: Mapping[str, Any] | None = None) -> Path:
    """Write (or rewrite) the model ``model_name`` into the Triton model repository ``out_dir`` and return the
    model folder. ``expected_sha256`` (e.g. from the registry) must match ``onnx_path``: a ConfigError names
    both hashes otherwise, and nothing is written. ``provenance`` (profile file, run ids, ...) goes into the
    config's header comments and ``provenance.json``."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if not isinstance(model_name, str) or not MODEL_NAME.fullmatch(model_name):
        raise ConfigError(f"model_name must be 1-128 letters, digits, '_', '.', '-' (not starting with a "
                          f"punctuation mark), got {model_name!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"version must be an integer >= 1, got {version!r}")
    if not isinstance(serving_config, ServingConfig):
        serving_config = ServingConfig.from_dict(serving_config)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError(f"onnx_path {onnx_path} is not a file")
    if onnx_path.with_name(onnx_path.name + ".data").exists():
        raise ConfigError(f"{onnx_path} has external weights ({onnx_path.name}.data); the repository takes "
                          "single-file ONNX models")
    actual = sha256_file(onnx_path)
    if expected_sha256 is not None:
        expected = str(expected_sha256).strip().lower()
        if not SHA256.fullmatch(expected):
            raise ConfigError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
        if expected != actual:
            raise ConfigError(f"{onnx_path} has SHA-256 {actual} but {expected} was expected; refusing to write a "
                              "repository for a different file")
    provenance = {"onnx_source": str(onnx_path), **dict(provenance or {})}
    text = render_config_pbtxt(model_name=model_name, spec=spec, serving_config=serving_config, flavour=flavour,
                               onnx_sha256=actual, provenance=provenance)
    parse_config_pbtxt(text)  # what we write, Triton's ModelConfig must accept
    model_dir = Path(out_dir) / model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_target = version_dir / "model.onnx"
    if not (onnx_target.is_file() and sha256_file(onnx_target) == actual):
        tmp = version_dir / f".model.onnx.{os.getpid()}.tmp"
        shutil.copyfile(onnx_path, tmp)
        os.replace(tmp, onnx_target)
    model_py = version_dir / "model.py"
    if flavour == "local":
        _write_atomic(model_py, TEMPLATE.read_bytes())
    else:
        model_py.unlink(missing_ok=True)
    _write_atomic(model_dir / PROVENANCE_FILE, (json.dumps({
        "model_name": model_name, "flavour": flavour, "version": version, "onnx_sha256": actual,
        "serving_config": serving_config.to_dict(), "provenance": provenance,
    }, indent=2, default=str) + "\n").encode())
    _write_atomic(model_dir / "config.pbtxt", text.encode())
    return model_dir


def verify_model_repository(repo_dir: str | Path) -> list[dict[str, Any]]:
    """Check every model file of the repository against its config's ``onnx_sha256`` before serving; returns
    [{model, version, path, sha256}]. ConfigError naming the file and both hashes on a mismatch, or naming
    what is missing (no models, no config, no hash parameter, no version folder, no model file)."""
    repo = Path(repo_dir)
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} is not a folder")
    models = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        raise ConfigError(f"model repository {repo} holds no model folders")
    verified = []
    for model_dir in models:
        config_path = model_dir / "config.pbtxt"
        if not config_path.is_file():
            raise ConfigError(f"{config_path} is missing; regenerate the repository (recforge.inference.model_repo)")
        config = parse_config_pbtxt(config_path)
        expected = config_parameters(config).get(SHA_PARAMETER, "").strip().lower()
        if not SHA256.fullmatch(expected):
            raise ConfigError(f"{config_path} has no valid {SHA_PARAMETER} parameter (got {expected!r}); refusing "
                              "to serve an unverified model")
        filename = config.get("default_model_filename") or "model.onnx"
        versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name))
        if not versions:
            raise ConfigError(f"{model_dir} has no version folder (e.g. 1/)")
        for version_dir in versions:
            path = version_dir / filename
            if not path.is_file():
                raise ConfigError(f"{path} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise ConfigError(f"{path}: SHA-256 {actual} does not match {expected} in {config_path}; refusing "
                                  "to serve it (regenerate the repository from the registered model)")
            verified.append({"model": model_dir.name, "version": int(version_dir.name), "path": str(path),
                             "sha256": actual})
    return verified


def read_provenance(model_dir: str | Path) -> dict[str, Any]:
    """The ``provenance.json`` that :func:`write_model_repository` wrote beside config.pbtxt."""
    path = Path(model_dir) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read: {err}") from None


__all__ = ["ServingConfig", "serving_config_from_profile", "render_config_pbtxt", "parse_config_pbtxt",
           "config_parameters", "write_model_repository", "verify_model_repository", "read_provenance",
           "tensor_contract", "sha256_file", "FLAVOURS"]
