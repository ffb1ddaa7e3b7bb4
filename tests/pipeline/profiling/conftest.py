"""Fixtures of the profiling tests."""

from __future__ import annotations

import pytest

from recforge.contracts.features import example_spec
from recforge.models import build_model
from recforge.models.export import export_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = example_spec()
    folder = tmp_path_factory.mktemp("profile")
    path = export_onnx(build_model("ncf", spec).eval(), spec, folder / "ncf.onnx")
    spec_path = folder / "spec.json"
    spec_path.write_text(spec.to_json())
    return path, spec, spec_path
