"""The fuzz campaign (issue 11): generated malformed KServe v2 requests (tests/serving/fuzz.py) sent through the
balancer of a real supervised 2-node fleet while a background client sends valid traffic at a steady rate.

Asserted: every malformed request answered with a status of its acceptable set (a 5xx or a dropped connection
fails, with the case printed), every valid control answered 200 with its rows, both nodes the same processes
afterwards with no restart recorded by the supervisor, and no error in the valid traffic. Bounded: a budget of
generated cases per mutation kind (:func:`tests.serving.fuzz.plan`) and ``CAMPAIGN_S`` seconds, derandomized (the
same cases on every run). One summary line
per family is printed, and written as JSON to ``$RECFORGE_FUZZ_REPORT`` when set."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import socket
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings

from recforge.contracts.features import example_spec
from recforge.contracts.headers import served_by
from recforge.inference import triton as tr
from recforge.models import build_model
from recforge.models.export import export_onnx
from recforge.serving import fleet as fl
from tests.serving import fuzz

SPEC = dataclasses.replace(example_spec(), sparse_cardinalities=(30, 50, 5, 4, 3, 4), num_genres=8, genre_slots=3,
                           history_length=5)
MODEL = "recforge-ncf"
EXAMPLES_PER_MUTATION = 6  # generated cases per mutation kind (fuzz.plan: with 100 valid controls, 558 in all)
CAMPAIGN_S = 120.0  # wall-clock cap of the generated cases (the fleet's start and the checks come on top)
VALID_RATE = 30.0  # valid requests per second beside the campaign
ANSWER_TIMEOUT_S = 20.0  # over HAProxy's 10 s body timeout

triton_ok, triton_why = tr.check_installation()
pytestmark = [pytest.mark.triton, pytest.mark.integration,
              pytest.mark.skipif(not triton_ok, reason=f"tritonserver cannot run here: {triton_why}")]


@dataclasses.dataclass(frozen=True)
class Answer:
    """What came back for one case: a status (None: the connection closed without one), the text, who answered."""

    status: int | None
    text: str
    by: str

    def accepted(self, case: fuzz.Case) -> bool:
        if self.status not in case.expect:
            return False
        if case.family != "valid":
            return True
        try:  # a valid control: the model's answer for its rows
            return json.loads(self.text)["outputs"][0]["shape"][0] == case.rows
        except (ValueError, KeyError, IndexError, TypeError):
            return False


def send(port: int, case: fuzz.Case, timeout_s: float = ANSWER_TIMEOUT_S) -> Answer:
    """``case.wire`` on a fresh connection to the balancer, then its answer (answered early: read it anyway)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        try:
            connection.sendall(case.wire)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(connection, method=case.method)
        try:
            response.begin()
            text = response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as err:
            return Answer(None, repr(err), "")
        return Answer(response.status, text, served_by(response.headers) or "balancer")


class ValidTraffic(threading.Thread):
    """Valid inference requests through the balancer at ``rate`` per second on one keep-alive session, counting
    the requests and the errors (an exception or any status but 200)."""

    def __init__(self, url: str, served: fuzz.ServedModel, rate: float):
        super().__init__(daemon=True)
        self.url, self.served, self.period = f"{url}{served.infer_path}", served, 1.0 / rate
        self.stop = threading.Event()
        self.sent = 0
        self.errors: list[str] = []

    def run(self) -> None:
        rng = np.random.default_rng(11)
        with requests.Session() as session:
            next_at = time.monotonic()
            while not self.stop.is_set():
                payload = fuzz.valid_payload(self.served, int(rng.integers(1, 9)), rng)
                try:
                    response = session.post(self.url, json=payload, timeout=10)
                    if response.status_code != 200:
                        self.errors.append(f"{response.status_code}: {response.text[:200]}")
                except requests.RequestException as err:
                    self.errors.append(repr(err))
                self.sent += 1
                next_at += self.period
                self.stop.wait(max(0.0, next_at - time.monotonic()))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A supervised 2-node fleet of a tiny NCF model (home in a temporary folder), stopped at the end."""
    folder = tmp_path_factory.mktemp("fuzz")
    onnx = export_onnx(build_model("ncf", SPEC).eval(), SPEC, folder / "m.onnx")
    spec_path = folder / "spec.json"
    spec_path.write_text(SPEC.to_json())
    source = fl.explicit_source(onnx, spec_path, model=MODEL)
    home = folder / "home"
    state = fl.up(source, fl.FleetConfig(nodes=2, port=0, check_inter_ms=200), home=home,
                  supervisor=fl.SupervisorConfig(interval_s=0.5))
    try:
        yield {"home": home, "state": state}
    finally:
        fl.down(home=home)


def summarize(outcomes: list[tuple[fuzz.Case, Answer]], traffic: ValidTraffic, nodes_lost: int) -> dict:
    families: dict[str, Counter] = defaultdict(Counter)
    mutations: Counter = Counter()
    statuses = Counter(str(answer.status) for _, answer in outcomes)
    answered_by = Counter("balancer" if a.by == "balancer" else "node" if a.by else "none" for _, a in outcomes)
    for case, answer in outcomes:
        counts = families[case.family]
        counts["sent"] += 1
        status = answer.status
        counts["no_answer" if status is None else f"{status // 100}xx"] += 1
        counts["failed"] += not answer.accepted(case)
        mutations[f"{case.family}.{case.mutations[0]}"] += 1
    totals = sum(families.values(), Counter())
    return {"requests_sent": len(outcomes), "families": {f: dict(c) for f, c in sorted(families.items())},
            "status_2xx": totals["2xx"], "status_4xx": totals["4xx"], "status_5xx": totals["5xx"],
            "no_answer": totals["no_answer"], "failed": totals["failed"], "statuses": dict(sorted(statuses.items())),
            "answered_by": dict(answered_by), "nodes_lost": nodes_lost,
            "valid_traffic_requests": traffic.sent, "valid_traffic_errors": len(traffic.errors),
            "mutations": dict(sorted(mutations.items()))}


def test_fuzz_campaign_through_the_balancer_loses_no_node_and_no_valid_request(fleet):
    home, state = fleet["home"], fleet["state"]
    port = int(state["url"].rsplit(":", 1)[1])
    # NCF looks up the user_id and item_id columns of sparse only (recforge/models/ncf.py)
    looked_up = {"sparse": (SPEC.index("user_id"), SPEC.index("item_id"))}
    served = fuzz.served_model(fl.fleet_dir(home) / "node0" / "repo" / MODEL / "config.pbtxt", SPEC, looked_up)
    pids = {name: node["pid"] for name, node in state["nodes"].items()}
    balancer_pid = state["balancer"]["pid"]
    outcomes: list[tuple[fuzz.Case, Answer]] = []
    over_time: list[fuzz.Case] = []  # generated after the wall-clock cap: not sent
    traffic = ValidTraffic(state["url"], served, VALID_RATE)
    traffic.start()
    deadline = time.monotonic() + CAMPAIGN_S

    def campaign(strategy, examples: int) -> None:
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: fuzz.Case) -> None:
            if time.monotonic() < deadline:
                outcomes.append((case, send(port, case)))
            else:
                over_time.append(case)

        run()

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # the requests whose body never ends wait out HAProxy's timeout meanwhile
        slow = [(case, pool.submit(send, port, case)) for case in fuzz.slow_cases(served)]
        for _family, _kind, strategy, examples in fuzz.plan(served, EXAMPLES_PER_MUTATION):
            campaign(strategy, examples)
        outcomes += [(case, future.result()) for case, future in slow]
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # a few health checks and supervisor looks after the last case
    traffic.stop.set()
    traffic.join(timeout=15)

    after = fl.read_state(home)
    # lost: another process now, or the supervisor acted on it (it records "supervision" only on a failure)
    lost = [name for name, pid in pids.items() if after["nodes"][name]["pid"] != pid or not fl.process_alive(pid)
            or "supervision" in after["nodes"][name]]
    summary = {**summarize(outcomes, traffic, len(lost)), "seconds": round(elapsed, 1),
               "not_sent_over_time": len(over_time)}
    lines = [f"{family:<9} {c['sent']:>4} sent: {c.get('2xx', 0)} 2xx, {c.get('4xx', 0)} 4xx, {c.get('5xx', 0)} 5xx, "
             f"{c.get('no_answer', 0)} no answer, {c['failed']} failed"
             for family, c in summary["families"].items()]
    print("\n" + "\n".join(lines))
    print(f"fuzz campaign: {summary['requests_sent']} requests in {elapsed:.1f} s, {len(summary['families'])} "
          f"families, {summary['status_4xx']} 4xx, {summary['status_5xx']} 5xx, {summary['no_answer']} no answer, "
          f"{summary['failed']} failed; nodes lost {len(lost)}/{len(pids)}; valid traffic "
          f"{traffic.sent} requests, {len(traffic.errors)} errors; {len(over_time)} not sent (over {CAMPAIGN_S:g} s)")
    failed = [(case, answer) for case, answer in outcomes if not answer.accepted(case)]
    if os.environ.get("RECFORGE_FUZZ_REPORT"):  # with every failed case's bytes, to add it to malformed.py
        summary["failures"] = [{"family": case.family, "mutations": case.mutations, "status": answer.status,
                                "by": answer.by, "answer": answer.text[:500], "request": case.wire.decode("latin-1")}
                               for case, answer in failed]
        Path(os.environ["RECFORGE_FUZZ_REPORT"]).write_text(json.dumps(summary, indent=2) + "\n")

    failures = [f"{case.describe()}\n  -> {answer.status} from {answer.by}: {answer.text[:300]}"
                for case, answer in failed]
    assert not failures, f"{len(failures)} cases answered outside their set:\n" + "\n".join(failures[:40])
    assert summary["families"]["valid"]["sent"] >= 20 and len(summary["families"]) == 11, summary
    assert not lost, (lost, after["nodes"])
    assert after["balancer"]["pid"] == balancer_pid and fl.process_alive(balancer_pid), after["balancer"]
    assert not traffic.errors, traffic.errors[:20]
    assert traffic.sent >= elapsed, (traffic.sent, elapsed)  # the valid traffic ran all along
    for name, node in after["nodes"].items():
        assert tr.model_ready(node["url"], MODEL, 1), f"{name} does not serve"
    assert {s["status"] for s in fl.Fleet(home=home).balancer.servers().values()} == {"UP"}
