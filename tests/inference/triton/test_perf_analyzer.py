"""recforge.inference.triton.perf_analyzer without a server: parsing perf_analyzer's real output, the input rows
and their JSON file, the command line, the options and finding the binary.

The fixtures are real perf_analyzer 2.41.0 outputs against the tiny NCF model of tests/serving (2 nodes, CPU,
python backend, a shared 2-core machine), -b 4, Poisson 20 requests/s, 2 s windows:

* ``balancer_p95``: through the fleet's HAProxy (no statistics there, so client-side figures only), ``--percentile=95``;
* ``node_server_stats``: straight to one node, with Triton's server-side statistics (queue, compute);
* ``failed_requests``: input data with an id past an embedding table's cardinality (every request refused, exit 99);
* ``unstable``: three windows never agreed within 10 % (exit 2, no CSV).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recforge.contracts.features import example_spec
from recforge.core.errors import ConfigError
from recforge.inference import model_repo as mr
from recforge.inference.triton import perf_analyzer as pa

FIXTURES = Path(__file__).with_name("fixtures")
SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
OPTIONS = pa.PerfOptions(model="recforge-ncf", request_rate=20.0, batch_size=4, measurement_interval_ms=2000)


def fixture(name: str) -> str:
    path = FIXTURES / name
    return path.read_text() if path.is_file() else ""


def triton_config(spec=SPEC) -> dict:
    """The JSON form Triton answers on /v2/models/<m>/config, for the tensor contract of ``spec``."""
    inputs, _ = mr.tensor_contract(spec)
    return {"name": "recforge-ncf", "max_batch_size": 256,
            "input": [{"name": name, "data_type": dtype, "dims": dims} for name, dtype, dims in inputs]}


# ---------------------------------------------------------------------------------------------- parsing


def test_a_run_through_the_balancer_is_parsed_from_its_csv_and_stdout():
    result = pa.parse_result(fixture("balancer_p95.txt"), fixture("balancer_p95.csv"), returncode=0, options=OPTIONS)
    assert result.ok and result.errors == () and result.request_count == 119
    assert result.throughput_infer_per_s == pytest.approx(66.1066)
    assert result.latency_us == {"p50": 1641, "p90": 1963, "p95": 2387, "p99": 5720}  # no average with --percentile
    assert (result.client_send_us, result.client_recv_us) == (121, 0)
    # the balancer refuses the statistics API: no server-side figures, rather than made-up ones
    assert result.network_server_us is None and result.server_queue_us is None
    assert result.server_compute_infer_us is None and result.server_request_count is None
    assert result.to_dict()["ok"] is True and result.load == "20 requests/s (poisson)"


def test_a_run_against_a_node_carries_the_server_side_figures():
    result = pa.parse_result(fixture("node_server_stats.txt"), fixture("node_server_stats.csv"), returncode=0,
                             options=OPTIONS)
    assert result.ok and result.request_count == 119 and result.server_request_count == 119
    assert result.latency_us == {"p50": 1407, "p90": 1616, "p95": 1724, "p99": 1866, "avg": 1408}
    assert (result.server_queue_us, result.server_compute_input_us, result.server_compute_infer_us,
            result.server_compute_output_us, result.network_server_us) == (250, 41, 562, 65, 341)


def test_refused_requests_and_unstable_runs_are_failures_with_their_messages():
    failed = pa.parse_result(fixture("failed_requests.txt"), "", returncode=99, options=OPTIONS)
    assert not failed.ok and failed.request_count is None and failed.latency_us == {}
    assert failed.errors[0].startswith("Failed to maintain requested inference load")
    refused = [e for e in failed.errors if "indices element out of data bounds, idx=999" in e]
    assert len(refused) == 1  # four threads printed the same refusal: kept once

    unstable = pa.parse_result(fixture("unstable.txt"), "", returncode=2, options=OPTIONS)
    assert not unstable.ok and unstable.errors == ("Failed to obtain stable measurement.",)
    # exit status 0 but no request completed is not a success either
    assert not pa.parse_result("", "", returncode=0, options=OPTIONS).ok


def test_csv_rows_are_read_by_header_name():
    rows = pa.parse_csv(fixture("node_server_stats.csv"))
    assert len(rows) == 1 and rows[0]["Request Rate"] == "20" and rows[0]["Server Queue"] == "250"
    assert pa.parse_csv("") == []


# ---------------------------------------------------------------------------------------------- input data


def test_input_rows_from_the_spec_stay_inside_every_vocabulary():
    arrays, sources = pa.input_rows(triton_config(), 500, spec=SPEC, seed=3)
    assert sources == {"sparse": "spec", "genres": "spec", "history": "spec", "dense": "spec"}
    assert arrays["sparse"].shape == (500, SPEC.num_sparse) and arrays["sparse"].dtype == np.int64
    assert (arrays["sparse"] >= 0).all()
    assert (arrays["sparse"] < np.array(SPEC.sparse_cardinalities)).all()
    assert 0 <= arrays["genres"].min() and arrays["genres"].max() < SPEC.num_genres
    assert 0 <= arrays["history"].min() and arrays["history"].max() < SPEC.num_items
    assert arrays["dense"].dtype == np.float32 and arrays["dense"].shape == (500, SPEC.num_dense)
    assert len(np.unique(arrays["sparse"][:, 0])) > 1  # real ids, not all padding
    again, _ = pa.input_rows(triton_config(), 500, spec=SPEC, seed=3)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)  # seeded


def test_inputs_the_spec_does_not_describe_are_zeros_and_say_so():
    config = triton_config()
    config["input"].append({"name": "extra", "data_type": "TYPE_FP16", "dims": [2, -1]})
    config["input"][0]["dims"] = [SPEC.num_sparse + 1]  # not the spec's shape: not generated from it
    arrays, sources = pa.input_rows(config, 4, spec=SPEC)
    assert sources["sparse"] == "zeros" and sources["extra"] == "zeros" and sources["dense"] == "spec"
    assert arrays["extra"].shape == (4, 2, 1) and arrays["extra"].dtype == np.float16 and not arrays["extra"].any()
    _, without_spec = pa.input_rows(triton_config(), 4)
    assert set(without_spec.values()) == {"zeros"}
    with pytest.raises(ConfigError, match="'text'.*TYPE_STRING"):
        pa.input_rows({"input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]}, 2)
    with pytest.raises(ConfigError, match="lists no inputs"):
        pa.input_rows({"name": "m", "input": []}, 2)


def test_the_input_data_document_has_one_step_per_row_with_floats_kept_floats():
    arrays, _ = pa.input_rows(triton_config(), 3, spec=SPEC, seed=1)
    arrays["dense"][0, :] = 0.0  # perf_analyzer refuses `0` for an FP32 input; it must be written `0.0`
    text = json.dumps(pa.input_data_document(arrays))
    document = json.loads(text)
    assert len(document["data"]) == 3
    first = document["data"][0]
    assert first["sparse"]["shape"] == [SPEC.num_sparse] and first["sparse"]["content"] == arrays["sparse"][0].tolist()
    assert first["dense"]["content"] == [0.0] * SPEC.num_dense and '"content": [0.0, 0.0' in text
    assert all(isinstance(v, int) for v in first["history"]["content"])
    with pytest.raises(ConfigError, match="same number of rows"):
        pa.input_data_document({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


# ---------------------------------------------------------------------------------------------- command and options


def test_the_command_line_of_a_poisson_rate_and_of_a_concurrency():
    command = pa.perf_analyzer_command("/opt/pa", "http://127.0.0.1:8100", OPTIONS, input_data="in.json",
                                       csv_path="out.csv")
    text = " ".join(command)
    assert command[:3] == ["/opt/pa", "-m", "recforge-ncf"] and "-u 127.0.0.1:8100 -i http -b 4" in text
    assert "--request-rate-range 20 --request-distribution poisson" in text and "--concurrency-range" not in text
    assert "--input-data in.json" in text and "-f out.csv" in text and "--measurement-interval 2000" in text
    closed = dataclasses.replace(OPTIONS, request_rate=None, concurrency=3, percentile=95, version=2)
    text = " ".join(pa.perf_analyzer_command("pa", "127.0.0.1:9", closed, input_data="i", csv_path="o"))
    assert "--concurrency-range 3" in text and "--request-rate-range" not in text
    assert "--percentile=95" in text and "-x 2" in text
    for bad in ("https://127.0.0.1:8100", "http://127.0.0.1", "http://h:80/v2", "ftp://h:1"):
        with pytest.raises(ConfigError, match="url must be http://host:port"):
            pa.host_port(bad)


def test_options_take_exactly_one_load_and_name_a_bad_field():
    assert OPTIONS.timeout_s == pytest.approx(OPTIONS.max_trials * 2.0 + pa.RUN_MARGIN_S)
    with pytest.raises(ConfigError, match="exactly one of request_rate and concurrency"):
        pa.PerfOptions(model="m")
    with pytest.raises(ConfigError, match="exactly one of request_rate and concurrency"):
        pa.PerfOptions(model="m", request_rate=1.0, concurrency=1)
    for field, value in (("request_rate", 0.0), ("batch_size", 0), ("measurement_interval_ms", 10),
                         ("distribution", "uniform"), ("model", "a/b"), ("max_trials", 2)):
        kwargs = {"model": "m", "concurrency": 1, field: value}
        with pytest.raises(ConfigError, match=rf"PerfOptions\.{field}"):
            pa.PerfOptions(**kwargs)


# ---------------------------------------------------------------------------------------------- the binary


def test_a_missing_binary_points_at_make_setup(tmp_path, monkeypatch):
    monkeypatch.setenv(pa.ENV_BINARY, str(tmp_path / "nowhere" / "perf_analyzer"))
    with pytest.raises(ConfigError, match=r"perf_analyzer is not installed.*make setup"):
        pa.perf_analyzer_binary()
    fake = tmp_path / "pa" / "bin" / "perf_analyzer"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    (tmp_path / "pa" / "lib").mkdir()
    monkeypatch.setenv(pa.ENV_BINARY, str(fake))
    assert pa.perf_analyzer_binary() == fake
    env = pa.perf_analyzer_env(fake, {"LD_LIBRARY_PATH": "/x:/y", "PATH": "/bin"})
    assert env["LD_LIBRARY_PATH"] == f"{(tmp_path / 'pa' / 'lib').resolve()}:/x:/y" and env["PATH"] == "/bin"


def test_the_installed_binary_runs_with_its_environment():
    try:
        binary = pa.perf_analyzer_binary()
    except ConfigError as err:
        pytest.skip(str(err))
    done = subprocess.run([str(binary), "--version"], env=pa.perf_analyzer_env(binary, os.environ),
                          capture_output=True, text=True, timeout=60, check=False)
    printed = done.stdout + done.stderr  # it prints its version on stderr
    assert done.returncode == 0 and "Perf Analyzer Version 2.41.0" in printed, printed
