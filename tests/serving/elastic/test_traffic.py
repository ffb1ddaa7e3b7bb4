"""recforge.serving.elastic.traffic: a traffic profile built from a synthetic balancer request log (rates, peak,
size histogram and sample), the request sizer (also on a real HAProxy's log of the fleet's client: integration),
the CLI, and logging to a real MLflow server (integration)."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid

import numpy as np
import pytest

from recforge.contracts import tags
from recforge.contracts.features import example_spec
from recforge.contracts.traffic import ARTIFACT_PATH, EXPERIMENT_ENV, SIZE_EDGES, load_traffic, traffic_from_dict
from recforge.core.errors import ConfigError, DataError
from recforge.core.ports import free_ports
from recforge.inference.triton.client import encode_request
from recforge.serving.elastic import traffic
from recforge.serving.loadbalancer.requestlog import parse_lines
from tests.serving.stub_node import StubNode

START = 1_790_000_000  # epoch s of the synthetic log's first second
SHA = "0" * 64
INFER = "/v2/models/m/infer"


def request_body(n_items: int) -> tuple[bytes, int]:
    """(body, JSON header length) of an n-item request as the fleet's clients encode it (example spec)."""
    spec = example_spec()
    inputs = {"sparse": np.zeros((n_items, spec.num_sparse), np.int64),
              "genres": np.zeros((n_items, spec.genre_slots), np.int64),
              "history": np.zeros((n_items, spec.history_length), np.int64),
              "dense": np.zeros((n_items, spec.num_dense), np.float32)}
    return encode_request(inputs, ["probability"])


def request_bytes(n_items: int, head: int = 147) -> int:
    """The bytes HAProxy logs (%U) for an n-item request: request line, ``head`` bytes of headers, body."""
    return len(f"POST {INFER} HTTP/1.1\r\n") + head + len(request_body(n_items)[0])


def synthetic_log() -> tuple[list[str], list[float], list[int]]:
    """50 s of traffic: 5 qps, a 10-s burst of 30 qps from second 20, 5 qps again; 70 % of the queries of 32
    items, 30 % of 512 (not DeepRecSys' lognormal), plus lines that are not inference requests."""
    rng = np.random.default_rng(7)
    times, sizes = [], []
    for second in range(50):
        rate = 30 if 20 <= second < 30 else 5
        for k in range(rate):
            times.append(START + second + (1000 * k // rate) / 1000)  # whole milliseconds, as logged
            sizes.append(32 if rng.random() < 0.7 else 512)
    lines = [f"recforge-request {int(t)}.{round(t * 1000) % 1000:03d} id{i} node{i % 2} 200 -- 5 "
             f"{request_bytes(n)} POST {INFER} {SHA}"
             for i, (t, n) in enumerate(zip(times, sizes, strict=True))]
    lines.insert(3, f"recforge-request {START + 1}.000 h1 node1 200 -- 1 0 GET /v2/health/ready -")
    lines.insert(5, "[NOTICE] haproxy started")
    return lines, times, sizes


def test_the_sizer_recovers_the_items_of_the_clients_requests():
    sizer = traffic.RequestSizer.for_spec(example_spec())
    sizes = (1, 7, 32, 167, 512, 999, 1024)
    for head in (146, 149):  # the headers' length measured through HAProxy varies with the lengths' digits
        assert [sizer.items(request_bytes(n, head), INFER) for n in sizes] == list(sizes)
    assert traffic.RequestSizer(100.0).items(250) == 2 and traffic.RequestSizer(100.0).items(10) == 1
    with pytest.raises(ConfigError, match="bytes_per_item must be > 0"):
        traffic.RequestSizer(0.0)


def test_a_traffic_profile_from_a_request_log():
    lines, times, sizes = synthetic_log()
    sizer = traffic.RequestSizer.for_spec(example_spec())
    profile = traffic.record_traffic(parse_lines(lines), sizer, source="synthetic log")
    assert profile.requests == len(sizes) == 40 * 5 + 10 * 30
    assert profile.recorded_from.startswith("2026-09-21T") and profile.recorded_from.endswith("+00:00")
    assert profile.interval_s == 1.0 and len(profile.rate_qps) == 50
    assert profile.rate_qps[0] == 5.0 and profile.rate_qps[25] == 30.0
    assert profile.peak_qps == pytest.approx(30.0) and profile.peak_window_s == 10.0  # the burst's 10 s
    assert profile.mean_qps == pytest.approx(500 / 50)
    expected = np.bincount(np.searchsorted(SIZE_EDGES, sizes, side="right") - 1, minlength=len(SIZE_EDGES) - 1)
    assert list(profile.size_counts) == expected.tolist()
    assert sorted(set(profile.size_sample)) == [32, 512] and len(profile.size_sample) == 500
    assert profile.mean_items_per_query == pytest.approx(np.mean(sizes))
    assert traffic_from_dict(profile.to_dict()) == profile  # a valid document
    # the subsample is seeded, and keeps at most MAX_SAMPLE sizes
    small = traffic.record_traffic(parse_lines(lines), sizer, seed=3)
    assert small == traffic.record_traffic(parse_lines(lines), sizer, seed=3)
    assert len(small.size_sample) == 500
    # a window: only the burst
    burst = traffic.record_traffic(parse_lines(lines), sizer, since=START + 20, until=START + 30)
    assert burst.requests == 300 and burst.peak_qps == pytest.approx(30.0) and burst.mean_qps == pytest.approx(30.0)


def test_each_nodes_latency_at_its_busiest_10_s_against_the_profiles_prediction(node_model):
    lines, times, sizes = synthetic_log()  # node0 and node1 take turns; every answer logged at 5 ms
    slow = [line.replace(" 200 -- 5 ", " 200 -- 40 ") if " node1 200 -- 5 " in line and
            START + 20 <= float(line.split()[1]) < START + 30 else line for line in lines]  # node1 slow in the burst
    slow.append(f"recforge-request {START + 40}.000 x1 <NOSRV> 503 LR 0 {request_bytes(32)} POST {INFER} -")
    sizer = traffic.RequestSizer.for_spec(example_spec())
    profile = traffic.record_traffic(parse_lines(slow), sizer, model=node_model)
    fast, slowed = profile.nodes["node0"], profile.nodes["node1"]
    assert set(profile.nodes) == {"node0", "node1"}  # a request the balancer shed has no node
    assert fast["requests"] + slowed["requests"] == 500 and fast["peak_qps"] == pytest.approx(15.0)
    assert fast["peak_p95_ms"] == 5.0 and slowed["peak_p95_ms"] == 40.0 and slowed["p95_ms"] == 40.0
    burst_sizes = [n for t, n in zip(times, sizes, strict=True) if START + 20 <= t < START + 30]
    ratio = float(np.mean(node_model.query_cost(np.array(burst_sizes[1::2])))) / node_model.profile_cost
    predicted = float(node_model.latency_ms(15.0 / node_model.saturation_at(ratio))[0])
    assert slowed["predicted_peak_p95_ms"] == pytest.approx(predicted, abs=1e-3)
    assert slowed["peak_p95_vs_predicted"] == pytest.approx(40.0 / slowed["predicted_peak_p95_ms"], rel=1e-3)
    assert slowed["peak_p95_vs_predicted"] > 5 > fast["peak_p95_vs_predicted"]
    assert traffic_from_dict(profile.to_dict()) == profile  # the optional field round-trips
    assert "node1 p95 40 ms at its peak 15 qps (profile:" in traffic.summary(profile)
    # without a profile: what the nodes served, no prediction
    plain = traffic.record_traffic(parse_lines(slow), sizer)
    assert "predicted_peak_p95_ms" not in plain.nodes["node1"] and plain.nodes["node1"]["peak_p95_ms"] == 40.0
    doc = profile.to_dict() | {"nodes": {"node0": {"p95_ms": -1}}}
    with pytest.raises(DataError, match="nodes must map node names to objects of finite figures >= 0"):
        traffic_from_dict(doc)


def test_a_long_recording_keeps_a_bounded_curve_and_samples_at_most_5000_sizes():
    lines = [f"recforge-request {START + s}.{ms:03d} id{s}-{ms} node1 200 -- 5 {100 * (1 + s % 4)} POST "
             f"/v2/models/m/infer {SHA}" for s in range(0, 7300, 1) for ms in (0, 500)]
    profile = traffic.record_traffic(parse_lines(lines), traffic.RequestSizer(100.0))
    assert profile.requests == 14_600 and len(profile.size_sample) == 5000
    assert len(profile.rate_qps) <= traffic.MAX_CURVE_POINTS and profile.interval_s == 3.0
    assert profile.rate_qps[0] == pytest.approx(2.0) and profile.peak_qps == pytest.approx(2.0)


def test_an_empty_window_is_one_line():
    lines, _, _ = synthetic_log()
    with pytest.raises(DataError, match="holds no inference request between"):
        traffic.record_traffic(parse_lines(lines), traffic.RequestSizer(100.0), since=START + 1000)
    with pytest.raises(DataError, match="holds no inference request"):
        traffic.record_traffic(parse_lines(["[NOTICE] nothing"]), traffic.RequestSizer(100.0))


def fleet_home(tmp_path) -> tuple:
    """A fleet folder as `make fleet-up` leaves it: state.json naming the balancer's log and the served spec."""
    lines, _, sizes = synthetic_log()
    root = tmp_path / "home" / "fleet"
    root.mkdir(parents=True)
    (root / "haproxy.log").write_text("\n".join(lines) + "\n")
    (root / "spec.json").write_text(example_spec().to_json())
    (root / "state.json").write_text(json.dumps({"version": 1, "balancer": {"log": str(root / "haproxy.log")},
                                                 "source": {"spec_path": str(root / "spec.json")}}))
    return root, sizes


def test_cli_records_from_the_fleet_state_without_mlflow(tmp_path, capsys):
    root, sizes = fleet_home(tmp_path)
    out = tmp_path / "t.json"
    assert traffic.main(["record", "--fleet-dir", str(root), "--out", str(out), "--no-mlflow"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed and printed.startswith("traffic profile: 500 requests") and "peak 30.00 qps" in printed
    profile = load_traffic(out)
    assert profile.requests == 500 and profile.mean_items_per_query == pytest.approx(np.mean(sizes))
    assert profile.source == f"balancer request log {root / 'haproxy.log'}"
    # bad invocations: one line each
    assert traffic.main(["record", "--fleet-dir", str(root), "--no-mlflow"]) == 1
    assert "--no-mlflow needs --out" in capsys.readouterr().err
    assert traffic.main(["record", "--fleet-dir", str(tmp_path / "nowhere" / "fleet"), "--out", str(out)]) == 1
    assert "no fleet state with a balancer" in capsys.readouterr().err
    elsewhere = ["--log", str(root / "haproxy.log"), "--fleet-dir", str(tmp_path / "none" / "fleet"), "--out",
                 str(out), "--no-mlflow"]
    assert traffic.main(["record", *elsewhere]) == 1
    assert "no feature spec to size the requests with" in capsys.readouterr().err
    assert traffic.main(["record", *elsewhere, "--spec", str(root / "spec.json"), "--since", "tomorrow"]) == 1
    assert "--since 'tomorrow' is not an ISO 8601 time" in capsys.readouterr().err
    assert traffic.main(["record", *elsewhere, "--bytes-per-item", "288", "--until", "2026-09-21T14:13:30"]) == 0
    assert "traffic profile: 50 requests" in capsys.readouterr().out  # the first 10 s at 5 qps


def test_cli_compares_the_nodes_with_the_fleets_profile_and_records_without_a_broken_one(tmp_path, capsys,
                                                                                          profile_file):
    root, _ = fleet_home(tmp_path)
    state = json.loads((root / "state.json").read_text())
    out = tmp_path / "t.json"
    (root / "state.json").write_text(json.dumps(state | {"source": state["source"] | {"profile": str(profile_file)}}))
    assert traffic.main(["record", "--fleet-dir", str(root), "--out", str(out), "--no-mlflow"]) == 0
    assert "node0 p95 5 ms at its peak 15 qps (profile:" in capsys.readouterr().out
    assert load_traffic(out).nodes["node1"]["predicted_peak_p95_ms"] > 0
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    (root / "state.json").write_text(json.dumps(state | {"source": state["source"] | {"profile": str(broken)}}))
    assert traffic.main(["record", "--fleet-dir", str(root), "--out", str(out), "--no-mlflow"]) == 0
    assert "(no per-node predictions: profile " in capsys.readouterr().out  # the traffic is still recorded
    assert "predicted_peak_p95_ms" not in load_traffic(out).nodes["node1"]
    assert traffic.main(["record", "--fleet-dir", str(root), "--out", str(out), "--no-mlflow",
                         "--profile", str(broken)]) == 1  # asked for by name: its error is the answer
    assert "profile " in capsys.readouterr().err


def test_traffic_is_logged_as_an_mlflow_run(tmp_path, mlflow_server, monkeypatch, capsys):
    import mlflow

    experiment = f"traffic-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv(EXPERIMENT_ENV, experiment)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root, _ = fleet_home(tmp_path)
    assert traffic.main(["record", "--fleet-dir", str(root), "--since", "2026-09-21T00:00:00"]) == 0
    printed = capsys.readouterr().out.strip()
    assert f"in {experiment}" in printed
    run_id = printed.split("MLflow run ")[1].split(" ")[0]
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED" and run.data.tags[tags.STAGE] == "traffic"
    assert run.data.params["requests"] == "500" and float(run.data.params["peak_qps"]) == pytest.approx(30.0)
    assert run.data.params["window"].startswith("2026-09-21T00:00:00+00:00 .. ")
    profile = load_traffic(client.download_artifacts(run_id, ARTIFACT_PATH, str(tmp_path)))
    assert run.data.tags[tags.TRAFFIC_RECORDED_TO] == profile.recorded_to
    assert profile.requests == 500 and profile.recorded_from == "2026-09-21T00:00:00+00:00"
    # a second recording goes to the same experiment
    second = traffic.log_traffic(profile)
    assert client.get_run(second).info.experiment_id == run.info.experiment_id

def logged(folder) -> list:
    return [r for r in parse_lines((folder / "haproxy.log").read_text().splitlines()) if r.method == "POST"]


@pytest.mark.integration
def test_the_items_of_the_fleet_clients_requests_through_a_real_haproxy(tmp_path):
    """The bytes HAProxy logs for the fleet's own client (headers included) give back each request's items."""
    from recforge.inference.triton.keepalive import KeepAliveClient
    from recforge.serving.loadbalancer import BackendNode, BalancerSettings, HAProxy, haproxy_binary, write_config

    try:
        haproxy_binary()
    except ConfigError as err:  # `make setup` installs it
        pytest.skip(str(err))
    lb_port = free_ports(1)[0]
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubNode)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    config = write_config(tmp_path / "haproxy.cfg", [BackendNode("node0", upstream.server_address[1])],
                          port=lb_port, socket_path=tmp_path / "admin.sock",
                          settings=BalancerSettings(check_inter_ms=200))
    proxy = HAProxy(config, tmp_path / "admin.sock", tmp_path / "haproxy.log", lb_port).start()
    sizes = [1, 7, 32, 167, 512, 1024, 64]
    try:
        proxy.wait_status("node0", "UP", timeout_s=10)
        client = KeepAliveClient(f"http://127.0.0.1:{lb_port}")
        for n in sizes:
            body, header_length = request_body(n)
            reply = client.post(INFER, body, {"Inference-Header-Content-Length": str(header_length),
                                              "Content-Type": "application/octet-stream"})
            assert reply.status == 200
        client.close()
        deadline = time.monotonic() + 10
        while len(logged(tmp_path)) < len(sizes) and time.monotonic() < deadline:  # logged as each request ends
            time.sleep(0.1)
    finally:
        proxy.stop()
        upstream.shutdown()
    profile = traffic.record_traffic(logged(tmp_path), traffic.RequestSizer.for_spec(example_spec()))
    assert profile.requests == len(sizes) and sorted(profile.size_sample) == sorted(sizes)
