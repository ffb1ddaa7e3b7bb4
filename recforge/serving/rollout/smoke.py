"""Smoke test of a staged node: seeded inputs of the model contract, compared with what onnxruntime computes from
the verified file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recforge.contracts.features import OUTPUT_NAME
from recforge.core.errors import RecForgeError
from recforge.inference.loadgen import load_spec
from recforge.inference.onnx import onnx_session
from recforge.inference.triton import infer
from recforge.models.export import example_inputs
from recforge.serving.rollout.config import RolloutFailed
from recforge.serving.rollout.history import save_state


def smoke_inputs(spec: Any, rows: int, seed: int) -> dict[str, Any]:
    """Seeded inputs of the model contract (numpy, batch first)."""
    return {k: np.ascontiguousarray(v.numpy()) for k, v in example_inputs(load_spec(spec), rows, seed).items()}


def expected_outputs(onnx_path: str | Path, inputs: Mapping[str, Any]) -> Any:
    """What the verified ONNX file answers to ``inputs`` in onnxruntime: the reference of the smoke test."""
    session = onnx_session(Path(onnx_path), 1)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: inputs[n] for n in names})[0].reshape(-1)


def check_smoke(url: str, model: str, inputs: Mapping[str, Any], expected: Any, atol: float) -> dict[str, float]:
    """Ask the node at ``url`` and compare; RolloutFailed naming the worst difference otherwise."""
    try:
        got = infer(url, model, inputs, outputs=[OUTPUT_NAME])[OUTPUT_NAME].reshape(-1)
    except RecForgeError as err:
        raise RolloutFailed(f"smoke test on {url}: {err}") from None
    if got.shape != np.asarray(expected).shape:
        raise RolloutFailed(f"smoke test on {url}: {got.shape[0]} outputs for {np.asarray(expected).shape[0]} rows")
    diff = float(np.max(np.abs(got.astype(np.float64) - np.asarray(expected, dtype=np.float64))))
    if not diff <= atol:
        raise RolloutFailed(f"smoke test on {url}: outputs differ from the registered model's by up to {diff:.3g} "
                            f"(tolerance {atol:g})")
    return {"rows": float(len(got)), "max_abs_diff": diff}


def smoke_test(plan: dict[str, Any], node: str | None = None) -> dict[str, Any]:
    """Step 3: known inputs on the (drained) canary node give the verified file's outputs."""
    if plan["noop"]:
        return plan
    cfg = plan["config"]
    node = node or plan["canary_node"]
    inputs = smoke_inputs(plan["new"]["spec"], cfg["smoke_rows"], cfg["seed"] + 1)
    expected = expected_outputs(plan["new"]["onnx"], inputs)
    result = check_smoke(plan["nodes"][node]["url"], plan["model"], inputs, expected, cfg["smoke_atol"])
    plan["figures"][f"smoke_{node}_max_abs_diff"] = result["max_abs_diff"]
    plan["status"] = "smoke_tested" if node == plan["canary_node"] else plan["status"]
    save_state(plan)
    return plan

