"""Stand-ins for the profiling tests: hardware targets that fail, are absent or sleep a known time per request
(this project's CI has no GPU), a small profiling budget, and variant rows."""

from __future__ import annotations

import uuid

from recforge.inference.loadgen import CallableTarget

RUN_ID = uuid.uuid4().hex
ACCURACY = {"auc": 0.75, "delta_auc": -0.001}
TINY = {"point_duration_s": 0.3, "start_qps": 100, "max_qps": 400, "max_steps": 4, "tolerance": 0.5,
        "min_sub_batch": 64, "max_sub_batch": 128, "threads": [1], "workers": 2, "max_evaluations": 4,
        "latency_batches": [1, 16], "latency_repeats": 3}


class Broken:
    name, kind = "broken", "cpu-onnxruntime"

    def available(self):
        return True, ""

    def describe(self):
        return "nowhere"

    def make_load_target(self, onnx_path, spec, knobs):
        raise RuntimeError("cannot open the device\nsecond line")


class Absent(Broken):
    name = "absent"

    def available(self):
        return False, "not plugged in"



class Sleeping:
    """A hardware target whose requests sleep ``fixed_ms + per_item_ms x items``: the stand-in for a GPU, which
    this project's CI does not have (and a CPU whose cost is known, so that the optimum is known)."""

    def __init__(self, name, kind, fixed_ms, per_item_ms):
        self.name, self.kind, self.fixed_ms, self.per_item_ms = name, kind, fixed_ms, per_item_ms
        self.closed = 0

    def available(self):
        return True, ""

    def describe(self):
        return f"sleeps {self.fixed_ms} ms + {self.per_item_ms} ms/item"

    def make_load_target(self, onnx_path, spec, knobs):
        return CallableTarget.sleeping(self.fixed_ms, self.per_item_ms, name=self.name)

    def close(self):
        self.closed += 1


def row(name, latency, auc, passed=True, **extra):
    """A variant row as compress_and_validate's summary has it."""
    return {"name": name, "latency_ms_b256": latency, "auc": auc, "passed": passed, **extra}
