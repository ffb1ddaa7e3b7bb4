"""Every command-line entry point of recforge/ answers ``--help``: usage on stdout, exit status 0.

The entry points are found, not listed (modules move): a package with a ``__main__.py`` (``python -m <package>``),
and every module that defines ``main(`` and runs it under ``if __name__ == "__main__"``. A module that defines
``main(`` without that guard must sit in a package whose ``__main__.py`` is the entry point; otherwise it is an
entry point that prints nothing, and it is tested (and fails) as one.

The commands import torch, mlflow, onnxruntime...: they run side by side in a thread pool, once per module. Together
they take about 30 s of CPU (15 s on a quiet 2-core machine, a minute on a busy one), which puts them in the
integration tier, not in ``make test-fast``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "recforge"
DEFINES_MAIN = re.compile(r"^def main\(", re.MULTILINE)
RUNS_AS_SCRIPT = re.compile(r"^if __name__ == [\"']__main__[\"']", re.MULTILINE)
TIMEOUT_S = 180


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] in ("__main__", "__init__"):
        parts = parts[:-1]
    return ".".join(parts)


def entry_points() -> list[str]:
    """Module names to run with ``python -m``, sorted."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__main__.py":
            found.add(module_name(path))
            continue
        text = path.read_text(encoding="utf-8")
        if not DEFINES_MAIN.search(text):
            continue
        if RUNS_AS_SCRIPT.search(text) or not (path.parent / "__main__.py").exists():
            found.add(module_name(path))
    return sorted(found)


ENTRY_POINTS = entry_points()


def run_help(module: str) -> subprocess.CompletedProcess:
    env = os.environ | {"GX_ANALYTICS_ENABLED": "False", "MLFLOW_DISABLE_TELEMETRY": "true"}
    try:
        return subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(err.cmd, -1, "", f"timed out after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, subprocess.CompletedProcess]:
    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(ENTRY_POINTS, pool.map(run_help, ENTRY_POINTS), strict=True))


def test_entry_points_are_found():
    assert "recforge.pipeline.data.ingest" in ENTRY_POINTS
    assert "recforge.pipeline.datagate.checks" in ENTRY_POINTS


@pytest.mark.integration
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_prints_usage_and_exits_0(module, help_outputs):
    result = help_outputs[module]
    assert result.returncode == 0, f"python -m {module} --help exited {result.returncode}: {result.stderr[-2000:]}"
    assert "usage" in result.stdout.lower(), f"python -m {module} --help printed no usage: {result.stdout[:500]!r}"
