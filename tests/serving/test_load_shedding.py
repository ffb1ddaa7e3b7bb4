"""Load shedding at the balancer (recforge.serving.loadbalancer.shedding): the generated config's shed rules and map
file, the runtime API's answers parsed, a shed request told apart in the request log; and a real HAProxy in front of
a stub node: nothing shed at 0, about half of the inference requests answered 503 + Retry-After at 0.5, health and
metadata requests never, the count in HAProxy's stats equal to the 503s seen, the share kept across a reload; and
the live controller setting the share through the fleet handle under overload and counting what was shed."""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time

import pytest

from recforge.core.errors import ConfigError
from recforge.core.ports import free_ports
from recforge.serving import loadbalancer as lb
from recforge.serving.elastic.live import LiveConfig, LiveController
from recforge.serving.elastic.live_signals import node_counters
from recforge.serving.fleet.state import STATE_VERSION, write_state
from recforge.serving.loadbalancer.haproxy_config import INFER_ROUTE
from recforge.serving.loadbalancer.requestlog import parse_line, parse_lines
from recforge.serving.loadbalancer.shedding import (
    SHED_MESSAGE,
    parse_show_map,
    shed_map_path,
    shed_per_mille,
    write_shed_map,
)
from tests.serving.elastic.conftest import PROFILE
from tests.serving.elastic.test_live_signals import triton_text
from tests.serving.stub_node import StubNode

try:
    lb.haproxy_binary()
except ConfigError as err:  # `make setup` installs it; without it these tests cannot mean anything
    pytest.skip(str(err), allow_module_level=True)

INFER = "/v2/models/ncf/infer"


def test_the_config_sheds_only_inference_requests_and_starts_at_zero(tmp_path):
    path = lb.write_config(tmp_path / "haproxy.cfg", [lb.BackendNode("node0", 8001)], port=18095,
                           socket_path=tmp_path / "admin.sock",
                           settings=lb.BalancerSettings(shed_retry_after_s=3))  # haproxy -c accepts it
    assert shed_map_path(tmp_path / "admin.sock").read_text() == "inference 0\n"
    lines = [line.strip() for line in path.read_text().splitlines()]
    shed_var = next(i for i, line in enumerate(lines) if "map_str_int(" in line)
    assert f"map_str_int({tmp_path / 'shed.map'},0)" in lines[shed_var] and "METH_POST sheddable" in lines[shed_var]
    # the share is read before the route allowlist's first allow (an allow ends the rule list) ...
    assert shed_var < next(i for i, line in enumerate(lines) if line.startswith("http-request allow"))
    # ... and a drawn POST to the infer route goes to the server-less backend that answers 503 + Retry-After
    use = next(line for line in lines if line.startswith(f"use_backend {lb.SHED_BACKEND} "))
    assert "METH_POST sheddable" in use and "rand(1000),sub(txn.shed_per_mille) lt 0" in use
    assert lines.index(use) < lines.index(f"default_backend {lb.BACKEND}")
    answer = next(line for line in lines if "return status 503" in line)
    assert answer.endswith("hdr Retry-After 3") and SHED_MESSAGE in answer
    assert any(line.startswith("acl sheddable path_reg") and line.endswith(INFER_ROUTE)
               for line in lines)

    # a rewrite (a reload's config) keeps the share the controller set
    write_shed_map(shed_map_path(tmp_path / "admin.sock"), 250)
    lb.write_config(path, [lb.BackendNode("node0", 8001)], port=18095, socket_path=tmp_path / "admin.sock")
    assert shed_map_path(tmp_path / "admin.sock").read_text() == "inference 250\n"


def test_shed_fractions_and_runtime_answers():
    assert [shed_per_mille(f) for f in (0, 0.0004, 0.25, 0.5, 1)] == [0, 0, 250, 500, 1000]
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ConfigError, match="shed fraction"):
            shed_per_mille(bad)  # type: ignore[arg-type]
    assert parse_show_map("0x55e0a1b2c3d0 inference 370\n\n") == 370
    assert parse_show_map("Unknown map identifier. Please use #<id> or <file>.\n") is None
    assert parse_show_map("") is None


def test_a_shed_request_is_told_apart_in_the_request_log():
    sha = "-"
    shed = parse_line(f"recforge-request 1764170000.123 AB12 <NOSRV> 503 LR 0 412 POST {INFER} {sha}")
    no_server = parse_line(f"recforge-request 1764170000.124 AB13 <NOSRV> 503 SC 0 412 POST {INFER} {sha}")
    node_503 = parse_line(f"recforge-request 1764170000.125 AB14 node0 503 -- 3 412 POST {INFER} {sha}")
    refused = parse_line(f"recforge-request 1764170000.126 AB15 <NOSRV> 400 LR 0 412 POST {INFER} {sha}")
    assert shed is not None and shed.shed
    assert not any(r.shed for r in (no_server, node_503, refused))


# --------------------------------------------------------------------------------------------- real HAProxy

def send(port: int, method: str, path: str) -> tuple[int, str | None, bytes]:
    """One request on a fresh connection: (status, Retry-After, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = b'{"inputs": []}' if method == "POST" else None
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, reply.getheader("Retry-After"), reply.read()
    finally:
        connection.close()


def shed_in_log(folder) -> int:
    return sum(r.shed for r in parse_lines((folder / "haproxy.log").read_text(errors="replace").splitlines()))


@pytest.mark.integration
def test_a_real_haproxy_sheds_the_share_it_is_set_to_and_counts_it(tmp_path):
    lb_port = free_ports(1)[0]
    node = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubNode)
    threading.Thread(target=node.serve_forever, daemon=True).start()
    config = lb.write_config(tmp_path / "haproxy.cfg", [lb.BackendNode("node0", node.server_address[1])],
                             port=lb_port, socket_path=tmp_path / "admin.sock",
                             settings=lb.BalancerSettings(check_inter_ms=200))
    write_shed_map(shed_map_path(tmp_path / "admin.sock"), 900)  # a previous fleet's share: a start resets it
    proxy = lb.HAProxy(config, tmp_path / "admin.sock", tmp_path / "haproxy.log", lb_port).start()
    try:
        proxy.wait_status("node0", "UP", timeout_s=10)
        assert proxy.shedding() == {"fraction": 0.0, "requests": 0}
        assert [send(lb_port, "POST", INFER)[0] for _ in range(40)] == [200] * 40  # shed 0: nothing shed

        proxy.set_shed_fraction(0.5)
        assert proxy.shed_fraction() == 0.5 and shed_map_path(tmp_path / "admin.sock").read_text() == "inference 500\n"
        answers = [send(lb_port, "POST", INFER) for _ in range(200)]
        shed = [a for a in answers if a[0] == 503]
        assert 60 <= len(shed) <= 140, len(shed)  # 30-70 % of 200 at 0.5 (binomial: 100 +- 7)
        assert len(shed) + sum(a[0] == 200 for a in answers) == 200  # the rest reached the node
        assert all(retry == "1" and body.count(b"\n") <= 1 and SHED_MESSAGE.encode() in body
                   for _, retry, body in shed)
        # health checks and the model's metadata and config are never shed; the versioned infer route is
        for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/ncf", "/v2/models/ncf/config"):
            assert {send(lb_port, "GET", path)[0] for _ in range(20)} == {200}, path
        versioned = [send(lb_port, "POST", "/v2/models/ncf/versions/2/infer")[0] for _ in range(40)]
        assert set(versioned) == {200, 503}

        seen = len(shed) + versioned.count(503)
        assert proxy.shedding() == {"fraction": 0.5, "requests": seen}  # HAProxy's count: the 503s seen
        deadline = time.monotonic() + 10
        while shed_in_log(tmp_path) < seen and time.monotonic() < deadline:  # logged as each request ends
            time.sleep(0.1)
        assert shed_in_log(tmp_path) == seen  # the request log tells the same requests apart

        # a reload (a node added, a rollout's admission refresh) keeps the share; 1 sheds every inference request
        proxy.reload()
        assert proxy.shed_fraction() == 0.5
        proxy.set_shed_fraction(1.0)
        assert {send(lb_port, "POST", INFER)[0] for _ in range(20)} == {503}
        proxy.set_shed_fraction(0.0)
        assert {send(lb_port, "POST", INFER)[0] for _ in range(20)} == {200}
    finally:
        proxy.stop()
        node.shutdown()


class CountingNode(StubNode):
    """StubNode that counts the inference requests it served (the node's Triton success counter, for the law)."""

    served = 0

    def do_POST(self):
        type(self).served += 1
        self.answer()


@pytest.mark.integration
def test_the_controller_sheds_through_the_fleet_handle_and_counts_what_was_shed(tmp_path):
    """The live controller's own I/O on a real HAProxy (only the node's Triton metrics are faked, from what the stub
    node served): the law's fraction is set through ``Fleet.set_shed_fraction``, the balancer answers that share
    503, and the count in controller.json is the 503s the client saw. The profile is scaled to 10 q/s per node and
    the controller's clock is a test clock (1 s per tick), so a few dozen requests per tick are an overload."""
    scale = 70.0
    profile = {**PROFILE, "latency_bounded_throughput_qps": PROFILE["latency_bounded_throughput_qps"] / scale,
               "curve": [{**row, "offered_qps": row["offered_qps"] / scale, "achieved_qps": row["achieved_qps"] / scale}
                         for row in PROFILE["curve"]]}
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    root = tmp_path / "home" / "fleet"
    hadir = root / "haproxy"
    lb_port = free_ports(1)[0]
    CountingNode.served = 0
    node = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingNode)
    threading.Thread(target=node.serve_forever, daemon=True).start()
    config = lb.write_config(hadir / "haproxy.cfg", [lb.BackendNode("node0", node.server_address[1])], port=lb_port,
                             socket_path=hadir / "admin.sock", settings=lb.BalancerSettings(check_inter_ms=200))
    proxy = lb.HAProxy(config, hadir / "admin.sock", hadir / "haproxy.log", lb_port).start()
    state = {"version": STATE_VERSION, "status": "up", "url": proxy.url, "balancer": proxy.state(),
             "nodes": {"node0": {"url": f"http://127.0.0.1:{node.server_address[1]}", "metrics_url": "fake",
                                 "http_port": node.server_address[1], "pid": None, "models": {"ncf": {"version": 1}},
                                 "lb_state": "ready", "weight": 100}},
             "source": {"profile": str(tmp_path / "profile.json")}}
    write_state(root, state)
    now = [0.0]
    live = LiveController(root, LiveConfig(min_nodes=1, max_nodes=1, log_every_s=0, scale=False), clock=lambda: now[0],
                          cpus=2, fleet_bounds=lambda state: (1, 1),
                          read_node=lambda url, timeout_s, models: (node_counters(triton_text(
                              CountingNode.served, 0, CountingNode.served * 5000, p95_us="5000")), ""))
    try:
        proxy.wait_status("node0", "UP", timeout_s=10)
        live.start()
        statuses: list[int] = []
        records = []
        for per_tick in (40, 40, 40, 40, 2, 2):  # 40 q/s offered to a 10 q/s node, then 2 q/s
            statuses += [send(lb_port, "POST", INFER)[0] for _ in range(per_tick)]
            records.append(live.tick(state))
            now[0] += 1.0
        shed = [a for r in records for a in r["actions"] if a["kind"] == "shed"]
        assert shed and shed[0]["applied"] and 0.5 < shed[0]["value"] < 1.0, shed  # about 1 - 10 / 40
        assert shed[-1]["value"] == 0.0 and shed[-1]["applied"] and proxy.shed_fraction() == 0.0  # load fell
        assert statuses.count(503) > 0 and set(statuses) == {200, 503}
        status = json.loads((root / "controller.json").read_text())
        assert status["shed"]["requests"] == statuses.count(503) == proxy.shedding()["requests"]
    finally:
        proxy.stop()
        node.shutdown()
