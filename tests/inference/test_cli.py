"""Every CLI of recforge.inference answers ``--help`` with its usage (exit 0), in process and as ``python -m``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recforge.inference.loadgen.cli import main as loadgen_main
from recforge.inference.triton.cli import main as triton_main


@pytest.mark.parametrize(("main", "prog"), [(loadgen_main, "recforge.inference.loadgen"),
                                            (triton_main, "recforge.inference.triton")])
def test_help_prints_the_usage(main, prog, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {prog} ")


@pytest.mark.parametrize("module", ["recforge.inference.loadgen", "recforge.inference.triton"])
def test_python_dash_m_answers_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: python -m {module} "), done.stderr[-2000:]
