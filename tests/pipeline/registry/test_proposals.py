"""Rollout proposals: every proposed command works as printed (the fleet that serves the target, then the
rollout), and only champions of targets a fleet serves are proposed."""

from __future__ import annotations

from recforge.contracts import registry
from recforge.contracts import tags as T
from recforge.contracts.targets import CPU_TRITON, GPU_ONNXRUNTIME, HYBRID_ONNXRUNTIME, TARGETS
from recforge.pipeline.registry import proposals
from tests.pipeline.registry.fabricated import CPU, FAMILY


def test_fleet_command_serves_the_proposed_model():
    assert proposals.fleet_command("recforge-din", "din", CPU_TRITON) == (
        "make fleet-up FLEET_FAMILY=din FLEET_TARGET=cpu-triton")
    # `make fleet-up` serves recforge-<family>: a model of another prefix is served from the registry by name
    assert proposals.fleet_command("t1-din", "din", CPU) == (
        f".venv/bin/python -m recforge.serving.fleet up --target {CPU} --from-registry t1-din {CPU}")
    assert proposals.rollout_command("recforge-din", CPU, "3") == (
        f"make rollout MODEL=recforge-din TARGET={CPU} VERSION=3")


def test_only_the_champion_of_a_cpu_target_is_servable():
    for target in (CPU, CPU_TRITON):
        assert proposals.why_not_servable("m", target, "2", {registry.alias("champion", target): "2"}) == ""
    champion = registry.alias("champion", CPU)
    assert "no longer champion-cpu-onnxruntime (now v3)" in proposals.why_not_servable("m", CPU, "2", {champion: "3"})
    # the old name of the ONNX Runtime target, which no fleet serves
    assert "'cpu' is not a hardware target" in proposals.why_not_servable("m", "cpu", "2", {"champion-cpu": "2"})
    # the local fleet's nodes are CPU tritonservers: `make fleet-up FLEET_TARGET=<gpu target>` is refused
    for target in (GPU_ONNXRUNTIME, HYBRID_ONNXRUNTIME):
        why = proposals.why_not_servable("m", target, "4", {registry.alias("champion", target): "4"})
        assert f"{target} runs on {TARGETS[target].device}; the local fleet's tritonserver nodes serve CPU" in why


def test_proposals_name_the_fleet_and_leave_out_what_no_fleet_serves(pipeline):
    train, _ = pipeline.night({"v": {"lbt": {CPU: 100.0, CPU_TRITON: 80.0, GPU_ONNXRUNTIME: 300.0, "cpu": 50.0},
                                     "auc": 0.75}})
    result = pipeline.register(train, dag_run_id="night-1")
    assert {t: r["decision"] for t, r in result["targets"].items()} == {
        CPU: "first_champion", CPU_TRITON: "first_champion", GPU_ONNXRUNTIME: "first_champion",
        "cpu": "first_champion"}
    found = [{"family": FAMILY, "candidate_run_id": train}, {"family": "din", "candidate_run_id": "r-din"}]
    proposal = proposals.propose_rollout([result], candidates=found, dag_run_id="night-1")

    by_target = {p["target"]: p for p in proposal["proposals"]}
    assert sorted(by_target) == [CPU, CPU_TRITON]
    cpu = by_target[CPU]
    assert cpu["command"] == f"make rollout MODEL={pipeline.model} TARGET={CPU} VERSION={cpu['version']}"
    assert cpu["fleet_command"] == proposals.fleet_command(pipeline.model, FAMILY, CPU)
    assert by_target[CPU_TRITON]["fleet_command"] == proposals.fleet_command(pipeline.model, FAMILY, CPU_TRITON)
    version = {t: r["version"] for t, r in result["targets"].items()}
    assert proposal["not_proposed"] == [
        f"{pipeline.model} cpu: v{version['cpu']} not proposed ('cpu' is not a hardware target (one of "
        f"{sorted(TARGETS)}); re-profile it under one of those names)",
        f"{pipeline.model} {GPU_ONNXRUNTIME}: v{version[GPU_ONNXRUNTIME]} not proposed "
        f"({proposals.why_not_servable(pipeline.model, GPU_ONNXRUNTIME, '', {})})"]
    assert proposal["failed"] == ["din: its register task failed (training run r-din); see its log"]
    text = open(proposal["path"]).read()
    assert all(p["command"] in text and p["fleet_command"] in text for p in proposal["proposals"])
    assert "Not proposed:" in text and "Failed:" in text
    tags = pipeline.client.get_model_version(pipeline.model, cpu["version"]).tags
    assert (tags[T.ROLLOUT_PROPOSAL], tags[T.ROLLOUT_PROPOSAL_FLEET]) == (cpu["command"], cpu["fleet_command"])
    assert T.ROLLOUT_PROPOSAL not in pipeline.client.get_model_version(
        pipeline.model, result["targets"]["cpu"]["version"]).tags
