"""Every CLI of recforge.tools answers ``--help`` with its usage (exit 0), in process and as ``python -m``; the
ONNX exporter's output stays out of the benchmark's."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest

from recforge.tools.bench.cli import main as bench_main
from recforge.tools.bench.quiet import EXPORTER_LOGGERS, quiet_onnx_export
from recforge.tools.fleet_bench import main as fleet_bench_main
from recforge.tools.hw_limits import main as hw_limits_main


@pytest.mark.parametrize(("main", "prog"), [(bench_main, "recforge.tools.bench"),
                                            (fleet_bench_main, "recforge.tools.fleet_bench"),
                                            (hw_limits_main, "recforge.tools.hw_limits")])
def test_help_prints_the_usage(main, prog, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {prog} ")


@pytest.mark.parametrize("module", ["recforge.tools.bench", "recforge.tools.fleet_bench", "recforge.tools.hw_limits"])
def test_python_dash_m_answers_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith(f"usage: python -m {module} "), done.stderr[-2000:]


def test_quiet_onnx_export_silences_prints_warnings_and_exporter_logs(capsys, caplog):
    exporter = logging.getLogger("torch.onnx._internal.exporter")
    before = [logging.getLogger(name).level for name in EXPORTER_LOGGERS]
    with caplog.at_level(logging.WARNING), quiet_onnx_export():
        print("exporting graph ...")
        print("a stderr line", file=sys.stderr)
        warnings.warn("exporter warning", UserWarning, stacklevel=1)
        exporter.warning("exporter log record")
    assert capsys.readouterr() == ("", "")
    assert "exporter log record" not in caplog.text
    assert [logging.getLogger(name).level for name in EXPORTER_LOGGERS] == before  # restored
    with pytest.raises(ValueError, match="export failed"), quiet_onnx_export():
        raise ValueError("export failed")  # errors still come through
