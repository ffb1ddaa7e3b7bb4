"""recforge.inference.model_repo with TorchScript models (fused embedding bags): the format read from the file, the
LibTorch backend's config (production) and the python backend's (local), and the refusals at write time (a format
the target cannot serve, a declared format or spec the file contradicts, a zip that is not a RecForge model)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile

import pytest

from recforge.contracts import tags
from recforge.contracts.targets import TARGETS
from recforge.core.errors import ConfigError
from recforge.inference import model_repo as mr
from recforge.inference.model_file import TARGET_FORMATS, check_servable, read_model_file
from recforge.models.formats import MODEL_FORMATS, ONNX, TORCHSCRIPT, format_of_file_name
from recforge.models.synthetic import RmcSpec, SyntheticDLRM
from recforge.models.synthetic_fused import FORMAT, fused_variant, save_torchscript

TINY = RmcSpec("tiny", num_tables=3, rows_per_table=1000, lookups_per_table=6, embedding_dim=8, dense_features=13,
               bottom_mlp=(16, 8), top_mlp=(16, 1))
SERVING = mr.ServingConfig(max_batch_size=64, instance_count=2, threads_per_instance=2,
                           sources={"threads_per_instance": "profile p.json: target.threads=2"})


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused")
    return save_torchscript(fused_variant(SyntheticDLRM(TINY, seed=0), "int8_tables"), folder / "tiny.int8.pt")


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx, the repository only copies and hashes it" * 10)
    return path


def test_the_format_is_read_from_the_file(model_pt, onnx_file):
    model = read_model_file(model_pt)
    assert model.format == TORCHSCRIPT == FORMAT and model.metadata["spec"]["name"] == "tiny"
    assert model.metadata["table_precision"] == "int8" and model.served_name == "model.pt"
    assert read_model_file(onnx_file).format == ONNX and read_model_file(onnx_file).metadata == {}
    assert read_model_file(model_pt, TORCHSCRIPT).format == TORCHSCRIPT
    with pytest.raises(ConfigError, match="declared 'onnx' but the file is 'torchscript'"):
        read_model_file(model_pt, ONNX)
    with pytest.raises(ConfigError, match="declared model format 'tflite'"):
        read_model_file(model_pt, "tflite")
    assert (format_of_file_name("onnx/v.onnx"), format_of_file_name("m.PT")) == (ONNX, TORCHSCRIPT)
    with pytest.raises(ConfigError, match=r"m\.bin: a model file must end with"):
        format_of_file_name("m.bin")
    assert tags.MODEL_FORMAT == "recforge.model_format"


def test_a_zip_that_is_not_a_recforge_torchscript_model_is_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("plain/data.pkl", b"...")
    with pytest.raises(ConfigError, match="without recforge.json"):
        read_model_file(plain)
    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("other/extra/recforge.json", json.dumps({"format": "onnx", "spec": {}}))
    with pytest.raises(ConfigError, match="does not say format 'torchscript'"):
        read_model_file(other)


def test_every_target_serves_onnx_and_only_cpu_triton_torchscript():
    assert set(TARGET_FORMATS) == set(TARGETS) and all(ONNX in f for f in TARGET_FORMATS.values())
    assert {t for t, f in TARGET_FORMATS.items() if TORCHSCRIPT in f} == {"cpu-triton"}
    assert set(MODEL_FORMATS) == {ONNX, TORCHSCRIPT}
    for target in TARGETS:
        check_servable("m", ONNX, target)
    with pytest.raises(ConfigError, match="not a hardware target"):
        check_servable("m", ONNX, "tpu-triton")


@pytest.mark.parametrize("target", ["cpu-onnxruntime", "gpu-triton", "gpu-onnxruntime", "hybrid-onnxruntime"])
def test_a_format_the_target_cannot_serve_is_refused_and_nothing_is_written(tmp_path, model_pt, target):
    with pytest.raises(ConfigError) as err:
        mr.write_model_repository(tmp_path / "repo", model_name="rmc_tiny", model_path=model_pt,
                                  serving_config=SERVING, target=target)
    message = str(err.value)
    assert "\n" not in message and "'rmc_tiny'" in message and "'torchscript'" in message and repr(target) in message
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("flavour", ["local", "production"])
def test_both_flavours_of_a_torchscript_model(tmp_path, model_pt, flavour):
    model_dir = mr.write_model_repository(tmp_path / "repo", model_name="rmc_tiny", model_path=model_pt,
                                          serving_config=SERVING, flavour=flavour, version=2,
                                          provenance={"variant": "int8_tables"})
    sha = hashlib.sha256(model_pt.read_bytes()).hexdigest()
    text = (model_dir / "config.pbtxt").read_text()
    config = mr.parse_config_pbtxt(model_dir / "config.pbtxt")
    assert config["name"] == "rmc_tiny" and config.get("max_batch_size", 0) == 0  # jagged: no Triton batching
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("dense", "TYPE_FP32", [-1, 13]), ("indices", "TYPE_INT64", [-1]), ("lengths", "TYPE_INT64", [-1, 3])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("probability__0", "TYPE_FP32", [-1])]
    assert "dynamic_batching" not in config and "model_warmup" not in config
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    params = mr.config_parameters(config)
    assert params["model_sha256"] == sha and "onnx_sha256" not in params
    assert (params["INTRA_OP_THREAD_COUNT"], params["INTER_OP_THREAD_COUNT"], params["INFERENCE_MODE"]) == \
        ("2", "1", "true")
    assert params["max_items_per_request"] == "64"
    line = next(ln for ln in text.splitlines() if "INTRA_OP_THREAD_COUNT" in ln)
    assert "profile p.json: target.threads=2" in line  # the value says where it came from
    assert (model_dir / "2" / "model.pt").read_bytes() == model_pt.read_bytes()
    assert not (model_dir / "2" / "model.onnx").exists()
    if flavour == "production":
        assert config["platform"] == "pytorch_libtorch" and config["default_model_filename"] == "model.pt"
        assert "backend" not in config and not (model_dir / "2" / "model.py").exists()
    else:
        assert config["backend"] == "python" and params["model_file"] == "model.pt"
        model_py = (model_dir / "2" / "model.py").read_text()
        assert "torch.jit.load" in model_py and "model_sha256" in model_py and "INTRA_OP_THREAD_COUNT" in model_py
        compile(model_py, "model.py", "exec")
    provenance = mr.read_provenance(model_dir)
    assert (provenance["model_format"], provenance["model_sha256"], provenance["target"]) == \
        ("torchscript", sha, "cpu-triton")
    assert mr.verify_model_repository(tmp_path / "repo") == [
        {"model": "rmc_tiny", "version": 2, "path": str(model_dir / "2" / "model.pt"), "sha256": sha}]


def test_verify_refuses_a_torchscript_file_that_does_not_match_its_config(tmp_path, model_pt):
    model_dir = mr.write_model_repository(tmp_path / "repo", model_name="m", model_path=model_pt,
                                          serving_config=SERVING)
    (model_dir / "1" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ConfigError, match=r"1/model\.pt: SHA-256 .* does not match"):
        mr.verify_model_repository(tmp_path / "repo")


def test_a_version_rewritten_in_another_format_keeps_one_model_file(tmp_path, model_pt, onnx_file):
    from recforge.contracts.features import example_spec

    repo = tmp_path / "repo"
    mr.write_model_repository(repo, model_name="m", model_path=onnx_file, spec=example_spec(),
                              serving_config=mr.ServingConfig())
    model_dir = mr.write_model_repository(repo, model_name="m", model_path=model_pt, serving_config=SERVING)
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.pt", "model.py"]
    assert mr.verify_model_repository(repo)[0]["path"].endswith("model.pt")


def test_the_spec_it_is_served_for_must_fit_the_file(tmp_path, model_pt, onnx_file):
    # the same spec (object or dict) is accepted; one addressing more rows, or other inputs, is refused
    for spec in (TINY, TINY.to_dict()):
        mr.write_model_repository(tmp_path / "ok", model_name="m", model_path=model_pt, spec=spec,
                                  serving_config=SERVING)
    with pytest.raises(ConfigError, match="addresses 5000 rows per table, but the file's tables hold 1000"):
        mr.write_model_repository(tmp_path / "repo", model_name="m", model_path=model_pt,
                                  spec=dataclasses.replace(TINY, rows_per_table=5000), serving_config=SERVING)
    with pytest.raises(ConfigError, match="spec num_tables 4 differs from the file's 3"):
        mr.write_model_repository(tmp_path / "repo", model_name="m", model_path=model_pt,
                                  spec=dataclasses.replace(TINY, num_tables=4), serving_config=SERVING)
    with pytest.raises(ConfigError, match="declared 'onnx' but the file is 'torchscript'"):
        mr.write_model_repository(tmp_path / "repo", model_name="m", model_path=model_pt, model_format="onnx",
                                  serving_config=SERVING)
    with pytest.raises(ConfigError, match="needs its feature spec"):
        mr.write_model_repository(tmp_path / "repo", model_name="m", model_path=onnx_file, serving_config=SERVING)
    with pytest.raises(ConfigError, match="once"):
        mr.write_model_repository(tmp_path / "repo", model_name="m", model_path=model_pt, onnx_path=model_pt,
                                  serving_config=SERVING)
    with pytest.raises(ConfigError, match="KIND_GPU"):
        mr.write_model_repository(tmp_path / "repo", model_name="m", model_path=model_pt,
                                  serving_config=mr.ServingConfig(instance_kind="KIND_GPU"))
    assert not (tmp_path / "repo").exists()
