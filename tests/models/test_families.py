"""The family registry (recforge.models.families): torch-free names, and metadata that matches the models."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recforge.models import build_model, default_hyperparams
from recforge.models.arches import MLP
from recforge.models.families import (
    BASELINE_FAMILY,
    DEEP_FAMILIES,
    FAMILIES,
    FAMILY_NAMES,
    OPT_IN_FAMILIES,
    family,
)
from tests.models.testutil import small_spec


def test_names_roles_and_lookup():
    assert FAMILY_NAMES == ("dlrm", "wide_deep", "ncf", "din", "logreg")  # a nightly's default
    assert DEEP_FAMILIES == ("dlrm", "wide_deep", "ncf", "din") and BASELINE_FAMILY == "logreg"
    assert OPT_IN_FAMILIES == ("mt_wnd", "dien")  # registered, trained when named
    assert set(FAMILIES) == set(FAMILY_NAMES) | set(OPT_IN_FAMILIES)
    assert [name for name, f in FAMILIES.items() if f.compressible] == [*DEEP_FAMILIES, *OPT_IN_FAMILIES]
    assert family("ncf").model_class().__name__ == "NCF"
    with pytest.raises(ValueError, match="unknown model family 'xgb'"):
        family("xgb")


def test_family_names_import_without_torch():
    """DAG files read the names while the scheduler parses them: no torch there."""
    code = ("import sys; import recforge.models; from recforge.models.families import FAMILY_NAMES; "
            "print(len(FAMILY_NAMES), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "False"]


@pytest.mark.parametrize("name", [*DEEP_FAMILIES, *OPT_IN_FAMILIES])
def test_compression_metadata_names_real_modules_and_hyperparameters(name):
    registered = family(name)
    model = build_model(name, small_spec())
    modules = dict(model.named_modules())
    defaults = default_hyperparams(name)
    for module_name, widths in registered.mlp_widths.items():
        assert isinstance(modules[module_name], MLP), module_name
        sizes = list(modules[module_name].layer_sizes)
        expected = sizes[:-1] if widths.class_adds_output else sizes
        assert list(defaults[widths.hyperparam]) == expected
    # every MLP of the model is listed: pruning must be able to rebuild the architecture
    assert {n for n, m in modules.items() if isinstance(m, MLP)} == set(registered.mlp_widths)
    assert set(registered.embedding_hyperparams) <= set(defaults)
