"""The live controller's load shedding with fakes of the fleet and HAProxy: the law's shed fraction planned as an
applied action where the balancer can shed (no churn for small moves, at once back to 0), advisory where it cannot;
applied through the balancer interface; the shed requests counted across HAProxy's counter restarts; and ticks that
shed under overload, stop when the load falls, and report the count in controller.json and to a restarted
controller."""

from __future__ import annotations

import json

from recforge.serving.elastic.control import Decision
from recforge.serving.elastic.live import LiveConfig, LiveController
from recforge.serving.elastic.live_actions import NO_SHEDDING, apply_actions, shed_action
from recforge.serving.elastic.live_signals import ShedCounter, balancer_view
from recforge.serving.loadbalancer import BalancerError, parse_show_stat
from tests.serving.elastic.test_live_controller import FakeFleetIO, FakeNodeOperations, fleet_folder
from tests.serving.elastic.test_live_signals import stat_text


def overload(fraction: float, reason: str = "shed 40.0%: arrivals 2000 q/s > 1200 q/s") -> Decision:
    return Decision(now_s=1.0, target_nodes=2, shed_fraction=fraction, shed_reason=reason if fraction else "")


# --- planning -----------------------------------------------------------------------------------------------------

def test_the_shed_fraction_is_applied_when_it_moves_and_not_for_small_moves():
    start = shed_action(overload(0.4), shed_now=0.0, tolerance=0.02)
    assert start is not None and not start.advisory and (start.kind, start.node, start.value) == ("shed", None, 0.4)
    assert "arrivals 2000 q/s" in start.reason and "was 0.0%" in start.reason
    assert shed_action(overload(0.41), shed_now=0.4, tolerance=0.02) is None  # no churn
    assert shed_action(overload(0.45), shed_now=0.4, tolerance=0.02).value == 0.45
    assert shed_action(overload(0.123456), shed_now=0.0, tolerance=0.02).value == 0.123  # the balancer's per mille
    stop = shed_action(overload(0.0), shed_now=0.01, tolerance=0.02)  # back to 0 at once, however small the move
    assert stop is not None and stop.value == 0.0 and "stop shedding" in stop.reason
    assert shed_action(overload(0.0), shed_now=0.0, tolerance=0.02) is None
    assert shed_action(overload(0.01), shed_now=0.0, tolerance=0.02) is None  # too little to start
    assert shed_action(overload(1.7), shed_now=0.0, tolerance=0.02).value == 1.0


def test_a_balancer_without_shedding_gets_the_advisory_action():
    advice = shed_action(overload(0.25), shed_now=None, tolerance=0.02)
    assert advice is not None and advice.advisory and advice.value == 0.25 and NO_SHEDDING in advice.reason
    assert shed_action(overload(0.0), shed_now=None, tolerance=0.02) is None


class ShedBalancer:
    """The balancer interface: records the shed fractions it is told (``refuse``: fails like a dead socket)."""

    def __init__(self, io: ShedFleetIO | None = None, refuse: bool = False):
        self.io, self.refuse = io, refuse
        self.calls: list[tuple[str, object]] = []

    def set_weight(self, node: str, weight: int) -> None:
        self.calls.append((node, weight))
        if self.io is not None:
            self.io.weights[node] = weight

    def set_batching(self, node: str, mode: str) -> None:
        self.calls.append((node, mode))

    def set_shed_fraction(self, fraction: float) -> None:
        if self.refuse:
            raise BalancerError("haproxy admin socket did not answer")
        self.calls.append(("shed", fraction))
        if self.io is not None:
            self.io.shed_fraction = fraction


def test_applying_sets_the_fraction_and_records_a_failure():
    actions = [shed_action(overload(0.4), shed_now=0.0, tolerance=0.02),
               shed_action(overload(0.3), shed_now=None, tolerance=0.02)]
    fake = ShedBalancer()
    done = apply_actions(actions, fake)
    assert fake.calls == [("shed", 0.4)] and [r["applied"] for r in done] == [True, False]
    failed = apply_actions(actions[:1], ShedBalancer(refuse=True))
    assert failed[0]["applied"] is False and "did not answer" in failed[0]["error"]


# --- counting -----------------------------------------------------------------------------------------------------

def shed_stat_text(req_tot: int, shed: int | None, **node1) -> str:
    """``show stat`` as a balancer with the shed backend answers it (``shed`` None: a config without it)."""
    text = stat_text(req_tot, **node1)
    if shed is None:
        return text
    return text + f"shed,BACKEND,0,0,0,1,200,{shed},0,0,0,0,,0,0,0,0,UP,0,0,0,,,{shed},\n"


def test_the_shed_count_survives_haproxys_counter_restarts():
    assert balancer_view(parse_show_stat(shed_stat_text(100, 7))).shed_total == 7
    assert balancer_view(parse_show_stat(shed_stat_text(100, None))).shed_total is None
    counter = ShedCounter()
    assert [counter.update(c) for c in (0, 5, 12, None, 3, 10)] == [0, 5, 12, 12, 15, 22]  # a reload after 12
    again = ShedCounter.from_dict(json.loads(json.dumps(counter.to_dict())))
    assert (again.total, again.last_seen) == (22, 10) and again.update(11) == 23
    assert ShedCounter.from_dict({"requests": "x"}).total == 0 and ShedCounter.from_dict(None).total == 0


# --- ticks --------------------------------------------------------------------------------------------------------

class ShedFleetIO(FakeFleetIO):
    """FakeFleetIO with a balancer that sheds: arrivals beyond what the nodes serve, and the shed backend's count."""

    def __init__(self):
        super().__init__()
        self.shed_fraction = 0.0
        self.shed = 0

    def stats(self, entry):
        return parse_show_stat(shed_stat_text(self.requests, self.shed, node1_weight=self.weights["node1"]))

    def read_shed(self, entry):
        return self.shed_fraction

    def offer(self, arrivals: int, per_node: int):
        """``arrivals`` requests in a second, of which the nodes serve ``per_node`` each and the balancer sheds its
        fraction."""
        self.serve(per_node)
        self.requests += arrivals - 2 * per_node
        self.shed += round(arrivals * self.shed_fraction)


def shedding_controller(root, io, clock):
    return LiveController(root, LiveConfig(min_nodes=2, log_every_s=0, scale=False), clock=clock, cpus=2,
                          read_stats=io.stats, read_node=io.node, control=ShedBalancer(io),
                          operations=FakeNodeOperations(), fleet_bounds=lambda state: (2, 2), read_shed=io.read_shed)


def test_overload_is_shed_and_stops_with_it_and_the_count_is_reported(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = ShedFleetIO(), [0.0]
    live = shedding_controller(root, io, lambda: now[0])
    live.start()
    records = []
    for _ in range(10):  # 4,000 q/s offered; the two nodes (700 q/s each at the SLO) serve 700 each
        io.offer(4000, 700)
        records.append(live.tick(state))
        now[0] += 1.0
    shed = [a for r in records for a in r["actions"] if a["kind"] == "shed"]
    assert shed and all(a["applied"] and not a["advisory"] for a in shed)
    assert 0.5 < shed[0]["value"] < 0.8 and "arrivals" in shed[0]["reason"]  # about 1 - 1400 / 4000
    assert io.shed_fraction == shed[-1]["value"]
    # no churn: each tick the balancer sheds the law's fraction or one within the tolerance of it, and the ticks
    # whose law moved less than that changed nothing (the law's correction of the nodes' capacity settles)
    decided = [(r["decision"]["shed_fraction"], r["shed"]["fraction"]) for r in records if "decision" in r]
    assert all(abs(round(law, 3) - applied) <= 0.02 for law, applied in decided)
    values = [a["value"] for a in shed]
    assert len(shed) < len(decided) and all(abs(b - a) > 0.02 for a, b in zip(values, values[1:], strict=False))

    for _ in range(3):  # the load falls under what the nodes carry: shedding stops at once
        io.offer(600, 300)
        records.append(live.tick(state))
        now[0] += 1.0
    stop = [a for r in records[10:] for a in r["actions"] if a["kind"] == "shed"]
    assert [(a["value"], a["applied"]) for a in stop] == [(0.0, True)] and "stop shedding" in stop[0]["reason"]
    assert io.shed_fraction == 0.0

    status = json.loads((root / "controller.json").read_text())
    assert status["shed"] == {"fraction": 0.0, "requests": io.shed, "haproxy_counter": io.shed} and io.shed > 0
    logged = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()]
    assert [a["value"] for d in logged for a in d.get("actions", []) if a["kind"] == "shed"] == \
        [a["value"] for a in shed] + [0.0]  # each applied change logged with its reason

    # a restarted balancer counts from 0 again; a restarted controller goes on from the saved total
    before = io.shed
    io.shed = 0
    again = shedding_controller(root, io, lambda: now[0])
    again.start()
    start = [json.loads(line) for line in (root / "controller-decisions.jsonl").read_text().splitlines()][-1]
    assert start["shed_in_haproxy"] == 0.0 and start["shed_requests_restored"] == before
    io.shed = 4
    assert again.tick(state)["shed"] == {"fraction": 0.0, "requests": before + 4}


def overloaded_ticks(live, io, state, now) -> tuple[dict, list[dict]]:
    """Three overloaded ticks (4,000 q/s offered, the nodes carry 700): (the last tick's record, its shed actions)."""
    for _ in range(3):
        io.offer(4000, 700)
        record = live.tick(state)
        now[0] += 1.0
    return record, [a for a in record["actions"] if a["kind"] == "shed"]


def test_without_a_shed_backend_the_fleet_gets_advice_not_a_runtime_call(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = ShedFleetIO(), [0.0]
    io.stats = lambda entry: parse_show_stat(shed_stat_text(io.requests, None))  # a config from before shedding
    live = shedding_controller(root, io, lambda: now[0])
    live.start()
    record, shed = overloaded_ticks(live, io, state, now)
    assert shed and shed[0]["advisory"] and not shed[0]["applied"] and NO_SHEDDING in shed[0]["reason"]
    assert ("shed", shed[0]["value"]) not in live.control.calls and record["shed"]["requests"] == 0


def test_with_shedding_off_the_fraction_is_advisory(tmp_path, profile_file):
    root, state = fleet_folder(tmp_path, profile_file)
    io, now = ShedFleetIO(), [0.0]
    live = LiveController(root, LiveConfig(min_nodes=2, log_every_s=0, scale=False, shed=False), clock=lambda: now[0],
                          cpus=2, read_stats=io.stats, read_node=io.node, control=ShedBalancer(io),
                          operations=FakeNodeOperations(), fleet_bounds=lambda state: (2, 2), read_shed=io.read_shed)
    live.start()
    record, shed = overloaded_ticks(live, io, state, now)
    assert shed and shed[0]["advisory"] and not shed[0]["applied"] and "LiveConfig.shed is off" in shed[0]["reason"]
    assert io.shed_fraction == 0.0 and not any(call[0] == "shed" for call in live.control.calls)
