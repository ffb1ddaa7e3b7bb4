"""Triton model repositories from one source of truth: a model file (ONNX or TorchScript), its spec and a serving
config (``recforge.inference.serving_config``, derived from the profile).

:func:`write_model_repository` reads the file's format (``recforge.inference.model_file``), refuses a format the
target cannot serve (e.g. TorchScript on ``cpu-onnxruntime``: one line naming model, format and target), and
writes ``<out>/<model>/config.pbtxt`` and ``<out>/<model>/<version>/`` in one of two flavours that share
everything but the runtime lines:

=============  ==============================================  ==================================================
format         ``production`` (NGC tritonserver images)        ``local`` (nvidia-pytriton server: python backend)
=============  ==============================================  ==================================================
onnx           ``platform: "onnxruntime_onnx"``, model.onnx    ``backend: "python"``, model.onnx + model.py
                                                               (``triton_model.py.tmpl``: onnxruntime)
torchscript    ``platform: "pytorch_libtorch"``, model.pt      ``backend: "python"``, model.pt + model.py
                                                               (``triton_model_torchscript.py.tmpl``:
                                                               ``torch.jit.load``)
=============  ==============================================  ==================================================

model.py reads the tensor names and dtypes from the config and checks the file's SHA-256 against it before it
loads anything. An ONNX model carries the tensor contract of ``recforge.contracts.features`` (inputs
``sparse``/``genres``/``history`` INT64 and ``dense`` FP32, output ``probability``, dims without the batch dim;
the model's ``[B]`` output is presented as ``[B, 1]``), ``dynamic_batching`` (left out with
``ServingConfig(dynamic_batching=False)``), ``model_warmup``, onnxruntime's thread parameters and the expected
SHA-256 as the parameter ``onnx_sha256``; model.py runs each dynamic batch as one onnxruntime call. A TorchScript
model (the synthetic models with fused embedding bags) carries the jagged contract (:func:`jagged_tensor_contract`:
``dense`` [B, Dd], ``indices`` [N], ``lengths`` [B, T] -> ``probability__0`` [B], named as the LibTorch backend
binds them), ``max_batch_size: 0`` (``indices`` has no batch dim: no Triton batching, a request is one batch), the
LibTorch backend's ``INTRA_OP_THREAD_COUNT``/``INTER_OP_THREAD_COUNT``/``INFERENCE_MODE`` and ``model_sha256``.
Both carry ``instance_group``, and every serving value is written with a comment naming the measurement it came
from (:class:`ServingConfig.sources`, filled by :func:`serving_config_from_profile`).

:func:`verify_model_repository` checks each model file against its config's hash before anything is served;
:func:`parse_config_pbtxt` reads a config back (with Triton's own ModelConfig protobuf, so a field Triton would
reject is rejected here too).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recforge.contracts.features import INPUT_NAMES, OUTPUT_NAME
from recforge.contracts.targets import CPU_TRITON
from recforge.core.errors import ConfigError
from recforge.core.hashing import sha256_file
from recforge.inference.loadgen import load_spec
from recforge.inference.model_file import ModelFile, check_servable, read_model_file
from recforge.inference.serving_config import ServingConfig, serving_config_from_profile
from recforge.models.formats import ONNX, TORCHSCRIPT

TEMPLATES = {ONNX: Path(__file__).with_name("triton_model.py.tmpl"),
             TORCHSCRIPT: Path(__file__).with_name("triton_model_torchscript.py.tmpl")}
FLAVOURS = ("local", "production")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
SHA_PARAMETER = "onnx_sha256"  # an ONNX model's expected SHA-256 (the name model.py and older repositories read)
SHA_PARAMETERS = {ONNX: SHA_PARAMETER, TORCHSCRIPT: "model_sha256"}
MODEL_FILE_PARAMETER = "model_file"  # local flavour: the file model.py loads (python backend's own file is model.py)
# the jagged contract of the synthetic models (recforge.models.synthetic): the LibTorch backend binds inputs by the
# forward's argument names and outputs by the <name>__<index> convention
TORCHSCRIPT_INPUTS = ("dense", "indices", "lengths")
TORCHSCRIPT_OUTPUT = f"{OUTPUT_NAME}__0"
PROVENANCE_FILE = "provenance.json"  # beside config.pbtxt; Triton ignores files it does not know


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


def jagged_tensor_contract(spec: Mapping[str, Any] | Any
                           ) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """The same for a synthetic model's jagged contract (an RmcSpec or its dict): ``dense`` [B, Dd] FP32,
    ``indices`` [N] INT64, ``lengths`` [B, T] INT64 -> ``probability__0`` [B] FP32, dims *with* the batch dim
    (-1: any), since ``indices`` has none and Triton therefore cannot batch these models (max_batch_size 0)."""
    get = spec.get if isinstance(spec, Mapping) else lambda key: getattr(spec, key, None)
    dense, tables = get("dense_features"), get("num_tables")
    if not (isinstance(dense, int) and dense >= 1 and isinstance(tables, int) and tables >= 1):
        raise ConfigError(f"a TorchScript model's spec needs dense_features and num_tables >= 1, got {dense!r} and "
                          f"{tables!r}")
    dims = {"dense": ("TYPE_FP32", [-1, dense]), "indices": ("TYPE_INT64", [-1]),
            "lengths": ("TYPE_INT64", [-1, tables])}
    return [(name, *dims[name]) for name in TORCHSCRIPT_INPUTS], [(TORCHSCRIPT_OUTPUT, "TYPE_FP32", [-1])]


def _comment(text: str) -> str:
    return " ".join(str(text).split())  # one line


def _string(value: str) -> str:
    return json.dumps(str(value))  # a valid protobuf text string literal for printable text


def _dims(dims: list[int]) -> str:
    return ", ".join(map(str, dims))


def _parameter(key: str, value: str, why: str) -> str:
    return f"parameters {{ key: {_string(key)} value: {{ string_value: {_string(value)} }} }}  # {_comment(why)}"


def _header(model_name: str, flavour: str, model_format: str, provenance: Mapping[str, Any] | None,
            generated_at: str | None) -> list[str]:
    lines = [
        f"# Triton model configuration of {model_name} ({model_format}, {flavour} flavour), written by "
        "recforge.inference.model_repo.write_model_repository",
        f"# generated at {generated_at or dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
    ]
    for key, value in (provenance or {}).items():
        lines.append(f"# provenance {key}: {_comment(value if isinstance(value, str) else json.dumps(value))}")
    return lines + [f"name: {_string(model_name)}"]


def _instance_group(cfg: ServingConfig) -> list[str]:
    return ["instance_group [",
            f"  {{ count: {cfg.instance_count} kind: {cfg.instance_kind} }}  "
            f"# {_comment(cfg.source('instance_count'))}",
            "]"]


def render_config_pbtxt(*, model_name: str, spec: Any, serving_config: ServingConfig, flavour: str,
                        onnx_sha256: str | None = None, provenance: Mapping[str, Any] | None = None,
                        generated_at: str | None = None, model_format: str = ONNX,
                        model_sha256: str | None = None) -> str:
    """The config.pbtxt text of a model of ``model_format`` (see the module docstring). ``spec``: the FeatureSpec
    of an ONNX model, the RmcSpec (or its dict) of a TorchScript one; the file's SHA-256 is ``model_sha256``
    (``onnx_sha256``, its older name, for ONNX)."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if model_format not in SHA_PARAMETERS:
        raise ConfigError(f"model_format must be one of {tuple(SHA_PARAMETERS)}, got {model_format!r}")
    sha = model_sha256 or onnx_sha256
    if not sha:
        raise ConfigError(f"config of {model_name}: the model file's SHA-256 is missing")
    lines = _header(model_name, flavour, model_format, provenance, generated_at)
    if model_format == TORCHSCRIPT:
        return "\n".join(lines + torchscript_config_lines(spec, serving_config, flavour, sha)) + "\n"
    cfg = serving_config
    inputs, outputs = tensor_contract(spec)
    if flavour == "production":
        lines += ['platform: "onnxruntime_onnx"  # Triton onnxruntime backend (NGC tritonserver images)',
                  'default_model_filename: "model.onnx"']
    else:
        lines += ['backend: "python"  # <version>/model.py runs model.onnx with onnxruntime (the nvidia-pytriton '
                  'tritonserver has the python backend only)']
    lines += [f"max_batch_size: {cfg.max_batch_size}  # {_comment(cfg.source('max_batch_size'))}", "input ["]
    for i, (name, dtype, dims) in enumerate(inputs):
        sep = "," if i < len(inputs) - 1 else ""
        lines.append(f"  {{ name: {_string(name)} data_type: {dtype} dims: [ {_dims(dims)} ] }}{sep}")
    lines += ["]", "output ["]
    for i, (name, dtype, dims) in enumerate(outputs):
        sep = "," if i < len(outputs) - 1 else ""
        lines.append(f"  {{ name: {_string(name)} data_type: {dtype} dims: [ {_dims(dims)} ] "
                     f"reshape: {{ shape: [ ] }} }}{sep}  # the model's [B] output, served as [B, 1]")
    lines.append("]")
    if cfg.dynamic_batching:
        lines.append("dynamic_batching {")
        if cfg.preferred_batch_size:
            lines.append(f"  preferred_batch_size: [ {_dims(list(cfg.preferred_batch_size))} ]  "
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
    lines += _instance_group(cfg)
    lines += [_parameter(SHA_PARAMETER, sha, "checked before loading (model.py, verify_model_repository)"),
              _parameter("intra_op_thread_count", str(cfg.threads_per_instance), cfg.source("threads_per_instance")),
              _parameter("inter_op_thread_count", "1", "sequential execution: one op at a time per instance")]
    lines.append(f"# warm-up batch sizes: {_comment(cfg.source('warmup_batch_sizes'))}")
    lines.append("model_warmup [")
    for i, batch in enumerate(cfg.warmup_batch_sizes):
        lines.append(f"  {{ name: \"warmup_batch_{batch}\" batch_size: {batch}")
        for name, dtype, dims in inputs:
            # ids 0 (unknown/padding) are valid for every vocabulary; random ids would not be
            data = "zero_data: true" if dtype == "TYPE_INT64" else "random_data: true"
            lines.append(f"    inputs {{ key: {_string(name)} value: {{ data_type: {dtype} "
                         f"dims: [ {_dims(dims)} ] {data} }} }}")
        lines.append("  }" + ("," if i < len(cfg.warmup_batch_sizes) - 1 else ""))
    lines.append("]")
    return "\n".join(lines) + "\n"


MAX_IDS_RULE = ("B items whose bags average twice the spec's lookups_per_table, and at least one item with every "
                "bag at the synthetic pooling cap (8 x lookups_per_table)")


def max_ids_per_request(spec: Mapping[str, Any] | Any, max_items: int) -> int:
    """The most ids a request to a jagged model may carry (:data:`MAX_IDS_RULE`): what bounds the request body the
    balancer buffers, and what model.py refuses beyond."""
    get = spec.get if isinstance(spec, Mapping) else lambda key: getattr(spec, key, None)
    tables, lookups = int(get("num_tables")), float(get("lookups_per_table") or 1)
    return max(max_items * tables * math.ceil(2 * lookups), tables * math.ceil(8 * lookups))


def torchscript_config_lines(spec: Any, cfg: ServingConfig, flavour: str, sha: str) -> list[str]:
    """The config.pbtxt lines after ``name`` of a TorchScript model: the LibTorch backend's platform and parameter
    names in both flavours (the local model.py reads the same ones), the jagged contract without Triton batching."""
    if cfg.instance_kind == "KIND_GPU":
        raise ConfigError("a TorchScript model with fused FBGEMM bags is served on the CPU; instance_kind KIND_GPU "
                          "is refused")
    inputs, outputs = jagged_tensor_contract(spec)
    if flavour == "production":
        lines = ['platform: "pytorch_libtorch"  # Triton PyTorch (LibTorch) backend (NGC tritonserver images)',
                 'default_model_filename: "model.pt"']
    else:
        lines = ['backend: "python"  # <version>/model.py runs model.pt with torch.jit.load (the nvidia-pytriton '
                 'tritonserver has the python backend only)']
    lines += ["max_batch_size: 0  # jagged inputs: indices [N] has no batch dimension, so Triton cannot batch "
              "requests; each request is one batch of B items, as the load generator's sub-batches are", "input ["]
    for i, (name, dtype, dims) in enumerate(inputs):
        sep = "," if i < len(inputs) - 1 else ""
        lines.append(f"  {{ name: {_string(name)} data_type: {dtype} dims: [ {_dims(dims)} ] }}{sep}"
                     + ("  # forward()'s argument names: how the LibTorch backend binds inputs" if i == 0 else ""))
    lines += ["]", "output ["]
    for name, dtype, dims in outputs:
        lines.append(f"  {{ name: {_string(name)} data_type: {dtype} dims: [ {_dims(dims)} ] }}  "
                     "# probability [B]; <name>__<index>: how the LibTorch backend binds outputs")
    lines.append("]")
    lines.append("# no dynamic_batching and no model_warmup: neither applies without a batch dimension "
                 "(the local model.py runs a warm-up call itself)")
    lines += _instance_group(cfg)
    lines += [
        _parameter(SHA_PARAMETERS[TORCHSCRIPT], sha, "checked before loading (model.py, verify_model_repository)"),
        _parameter("INTRA_OP_THREAD_COUNT", str(cfg.threads_per_instance), cfg.source("threads_per_instance")),
        _parameter("INTER_OP_THREAD_COUNT", "1", "one forward at a time per instance"),
        _parameter("INFERENCE_MODE", "true", "no autograd state: the model is served, not trained"),
        _parameter("max_items_per_request", str(cfg.max_batch_size),
                   f"largest B a request may carry (local model.py refuses more with a 400): "
                   f"{cfg.source('max_batch_size')}"),
        _parameter("max_ids_per_request", str(max_ids_per_request(spec, cfg.max_batch_size)),
                   f"largest N a request may carry (model.py and the balancer refuse more): {MAX_IDS_RULE}"),
    ]
    if flavour == "local":
        lines.append(_parameter(MODEL_FILE_PARAMETER, "model.pt", "the file model.py loads"))
    return lines


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


def write_model_repository(out_dir: str | Path, *, model_name: str, serving_config: ServingConfig | Mapping[str, Any],
                           model_path: str | Path | None = None, spec: Any = None, flavour: str = "local",
                           version: int = 1, expected_sha256: str | None = None,
                           provenance: Mapping[str, Any] | None = None, target: str = CPU_TRITON,
                           model_format: str | None = None, onnx_path: str | Path | None = None) -> Path:
    """Write (or rewrite) the model ``model_name`` into the Triton model repository ``out_dir`` and return the
    model folder. ``model_path`` (``onnx_path``: its older name) is an ONNX file or a TorchScript ``model.pt``:
    the format is read from the file (:func:`recforge.inference.model_file.read_model_file`; ``model_format``, e.g.
    the registry's tag, must agree), and a format ``target`` cannot serve is refused (ConfigError naming model,
    format and target) before anything is written. ``spec``: the FeatureSpec of an ONNX model; for TorchScript the
    spec inside the file is used, and a given RmcSpec must not address more rows than the file's tables hold.
    ``expected_sha256`` (e.g. from the registry) must match the file: a ConfigError names both hashes otherwise,
    and nothing is written. ``provenance`` (profile file, run ids, ...) goes into the config's header comments and
    ``provenance.json``."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    if not isinstance(model_name, str) or not MODEL_NAME.fullmatch(model_name):
        raise ConfigError(f"model_name must be 1-128 letters, digits, '_', '.', '-' (not starting with a "
                          f"punctuation mark), got {model_name!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"version must be an integer >= 1, got {version!r}")
    if (model_path is None) == (onnx_path is None):
        raise ConfigError("give the model file as model_path (or its older name onnx_path), once")
    if not isinstance(serving_config, ServingConfig):
        serving_config = ServingConfig.from_dict(serving_config)
    source = Path(model_path if model_path is not None else onnx_path)
    model = read_model_file(source, model_format)
    check_servable(model_name, model.format, target)
    if source.with_name(source.name + ".data").exists():
        raise ConfigError(f"{source} has external weights ({source.name}.data); the repository takes "
                          "single-file models")
    spec = served_spec(model, spec)
    actual = sha256_file(source)
    if expected_sha256 is not None:
        expected = str(expected_sha256).strip().lower()
        if not SHA256.fullmatch(expected):
            raise ConfigError(f"expected_sha256 must be 64 hex digits, got {expected_sha256!r}")
        if expected != actual:
            raise ConfigError(f"{source} has SHA-256 {actual} but {expected} was expected; refusing to write a "
                              "repository for a different file")
    provenance = {"model_source": str(source), "model_format": model.format, **dict(provenance or {})}
    text = render_config_pbtxt(model_name=model_name, spec=spec, serving_config=serving_config, flavour=flavour,
                               model_sha256=actual, provenance=provenance, model_format=model.format)
    parse_config_pbtxt(text)  # what we write, Triton's ModelConfig must accept
    model_dir = Path(out_dir) / model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    target_file = version_dir / model.served_name
    if not (target_file.is_file() and sha256_file(target_file) == actual):
        tmp = version_dir / f".{model.served_name}.{os.getpid()}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target_file)
    for stale in version_dir.iterdir():  # a version rewritten in another format keeps one model file
        if stale.name in ("model.onnx", "model.pt") and stale.name != model.served_name:
            stale.unlink()
    model_py = version_dir / "model.py"
    if flavour == "local":
        _write_atomic(model_py, TEMPLATES[model.format].read_bytes())
    else:
        model_py.unlink(missing_ok=True)
    _write_atomic(model_dir / PROVENANCE_FILE, (json.dumps({
        "model_name": model_name, "flavour": flavour, "version": version, "model_format": model.format,
        "target": target, "model_sha256": actual, **({SHA_PARAMETER: actual} if model.format == ONNX else {}),
        "serving_config": serving_config.to_dict(), "provenance": provenance,
    }, indent=2, default=str) + "\n").encode())
    _write_atomic(model_dir / "config.pbtxt", text.encode())
    return model_dir


def served_spec(model: ModelFile, spec: Any) -> Any:
    """The spec config.pbtxt is written from: ``spec`` for ONNX; for TorchScript the file's own spec, after checking
    that a given one (the spec it is served for) has the same inputs and addresses no row beyond its tables."""
    if model.format == ONNX:
        if spec is None:
            raise ConfigError(f"{model.path}: an ONNX model needs its feature spec (spec=...)")
        return spec
    own = model.metadata["spec"]
    if spec is None:
        return own
    declared = dict(spec) if isinstance(spec, Mapping) else getattr(spec, "to_dict", dict)()
    for key in ("num_tables", "dense_features", "embedding_dim"):
        if declared.get(key) != own.get(key):
            raise ConfigError(f"{model.path}: spec {key} {declared.get(key)!r} differs from the file's "
                              f"{own.get(key)!r}")
    if int(declared.get("rows_per_table", 0)) > int(own.get("rows_per_table", 0)):
        raise ConfigError(f"{model.path}: the spec served addresses {declared['rows_per_table']} rows per table, but "
                          f"the file's tables hold {own['rows_per_table']}; refusing ids beyond its tables")
    return own


def verify_model_repository(repo_dir: str | Path) -> list[dict[str, Any]]:
    """Check every model file of the repository against its config's hash (``onnx_sha256`` of an ONNX model,
    ``model_sha256`` of a TorchScript one) before serving; returns
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
        parameters = config_parameters(config)
        sha_key = next((key for key in SHA_PARAMETERS.values() if key in parameters), SHA_PARAMETER)
        expected = parameters.get(sha_key, "").strip().lower()
        if not SHA256.fullmatch(expected):
            raise ConfigError(f"{config_path} has no valid {sha_key} parameter (got {expected!r}); refusing "
                              "to serve an unverified model")
        filename = (parameters.get(MODEL_FILE_PARAMETER) or config.get("default_model_filename") or "model.onnx")
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
           "tensor_contract", "jagged_tensor_contract", "served_spec", "sha256_file", "FLAVOURS"]
