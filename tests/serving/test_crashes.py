"""The balancer's request log (recforge.serving.loadbalancer.requestlog) and the crash records and quarantine built
from it (recforge.serving.fleet.crashes): parsing, suspects of a failure, the quarantine rule, the tail of a
growing log."""

from __future__ import annotations

import pytest

from recforge.core.errors import ConfigError
from recforge.serving.fleet import crashes
from recforge.serving.loadbalancer.requestlog import LOG_TAG, LogTail, failed_on, parse_line

SHA_A, SHA_B = "a" * 64, "b" * 64


def line(accepted: float, node: str, status: int, termination: str, sha: str = SHA_A, uid: str = "id1") -> str:
    secs, ms = int(accepted), round((accepted % 1) * 1000)
    return (f"{LOG_TAG} {secs}.{ms:03d} {uid} {node} {status} {termination} 12 340 POST "
            f"/v2/models/m/infer {sha}")


def test_a_log_line_is_parsed_and_other_lines_are_skipped():
    record = parse_line("<134>Nov 26 " + line(1000.25, "node1", 502, "SH"))
    assert record is not None
    assert (record.accepted_at, record.node, record.status, record.termination) == (1000.25, "node1", 502, "SH")
    assert record.body_sha256 == SHA_A and record.ended_on_server_side
    assert parse_line(line(1000.0, "node1", 200, "--")).ended_on_server_side is False
    unhashed = parse_line(f"{LOG_TAG} 1000.000 id2 <NOSRV> 403 PR 0 80 GET /v2/repository/index -")
    assert unhashed is not None and unhashed.body_sha256 is None and not unhashed.ended_on_server_side
    assert parse_line("[NOTICE]   (1557) : Loading success.") is None


def test_suspects_are_the_requests_that_ended_on_the_failed_node_in_the_window():
    records = [parse_line(text) for text in (
        line(100.0, "node1", 502, "SH", uid="in"),         # reset by node1: a suspect
        line(100.5, "node1", -1, "KH", uid="killed"),      # killed when node1 was marked down: a suspect
        line(100.2, "node0", 502, "SH", uid="other"),      # another node
        line(100.3, "node1", 200, "--", uid="fine"),       # answered
        line(10.0, "node1", 502, "SH", uid="old"),         # long before
    )]
    suspects = failed_on(records, "node1", since=90.0, until=101.0)
    assert [r.unique_id for r in suspects] == ["in", "killed"]


def test_a_body_is_quarantined_after_quarantine_after_crashes_and_only_once():
    def crash(*shas: str) -> dict:
        return {"node": "n", "suspects": [{"body_sha256": s} for s in shas]}

    history = [crash(SHA_A, SHA_B), crash(SHA_A)]
    assert crashes.to_quarantine(history, 2) == [SHA_A]
    assert crashes.to_quarantine(history, 2, already=[SHA_A]) == []
    assert crashes.to_quarantine(history, 1) == [SHA_A, SHA_B]
    assert crashes.to_quarantine(history, 0) == []  # 0: never
    assert crashes.to_quarantine([crash(SHA_A, SHA_A)], 2) == []  # twice in one crash is one crash


def test_crash_records_and_the_quarantine_file_round_trip(tmp_path):
    suspects = [parse_line(line(100.0, "node1", 502, "SH"))]
    crashes.append_crash(tmp_path, crashes.crash_record("node1", "crash", 101.0, suspects))
    (tmp_path / crashes.CRASHES_FILE).open("a").write("not json\n")
    records = crashes.read_crashes(tmp_path)
    assert len(records) == 1 and records[0]["suspects"][0]["body_sha256"] == SHA_A
    crashes.write_quarantine(tmp_path, [SHA_B, SHA_A, SHA_A])
    assert crashes.read_quarantine(tmp_path) == [SHA_A, SHA_B]
    assert crashes.check_sha256(SHA_A) == SHA_A
    with pytest.raises(ConfigError, match="not a body SHA-256"):
        crashes.check_sha256("abc")


def test_the_tail_reads_only_new_complete_lines_and_follows_a_new_file(tmp_path):
    path = tmp_path / "haproxy.log"
    path.write_text(line(1.0, "node0", 502, "SH", uid="before") + "\n")
    assert [r.unique_id for r in LogTail(str(path)).poll()] == ["before"]
    tail = LogTail(str(path), from_end=True)
    assert tail.poll() == []  # opened at the end: what was there before is not news
    with path.open("a") as fh:
        fh.write(line(2.0, "node0", 200, "--", uid="ok") + "\n" + line(3.0, "node0", 502, "SH", uid="new") + "\n")
        fh.write(line(4.0, "node0", 502, "SH", uid="partial")[:30])  # being written
    assert [r.unique_id for r in tail.poll()] == ["new"]
    with path.open("a") as fh:
        fh.write(line(4.0, "node0", 502, "SH", uid="partial")[30:] + "\n")
    assert [r.unique_id for r in tail.poll()] == ["partial"]
    path.unlink()
    path.write_text(line(5.0, "node0", 502, "SD", uid="rotated") + "\n")
    assert [r.unique_id for r in tail.poll()] == ["rotated"]
    assert [r.unique_id for r in tail.failures] == ["new", "partial", "rotated"]
