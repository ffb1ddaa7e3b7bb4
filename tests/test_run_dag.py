"""infra/local/run-dag.sh (behind make nightly/compress/profile/register/rollout): the whole log in a file, a short
summary on stdout, the DAG run's exit status. Airflow is replaced by a script that prints a recorded log."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

AIRFLOW_LOG = """\
2026-11-25T23:40:47.520305Z [info     ] [DAG TEST] starting task_id=ingest map_index=-1 [airflow.sdk] loc=dag.py:1501
2026-11-25T23:40:48.000000Z [info     ] some noise nobody needs [airflow.task] loc=x.py:1
2026-11-25T23:41:13.394652Z [info     ] [DAG TEST] end task task_id=ingest map_index=-1 [airflow.sdk] loc=dag.py:1563
2026-11-25T23:41:14.394652Z [info     ] [DAG TEST] end task task_id=train map_index=2 [airflow.sdk] loc=dag.py:1563
2026-11-25T23:41:14.394652Z [info     ] [DAG TEST] end task task_id=train map_index=2 [airflow.sdk] loc=dag.py:1563
recforge.core.errors.DataCheckError: data checks failed for partition 1998-04-22: 1 of 16 expectations failed:
  - expect_column_values_to_be_between(rating, 1..5): 3 of 400 rows unexpected
2026-11-25T23:41:15.000000Z [info     ] profiled dlrm/fp32 on cpu-onnxruntime [recforge.pipeline.profiling] loc=a.py:9
"""


def fake_repo(tmp_path: Path, exit_status: int) -> Path:
    """A copy of run-dag.sh beside an airflow.sh that records its arguments, prints AIRFLOW_LOG and exits."""
    local = tmp_path / "repo" / "infra" / "local"
    local.mkdir(parents=True)
    shutil.copy2(REPO / "infra/local/run-dag.sh", local / "run-dag.sh")
    (tmp_path / "airflow.log").write_text(AIRFLOW_LOG)
    airflow = local / "airflow.sh"
    airflow.write_text(f'#!/usr/bin/env bash\necho "$@" > {tmp_path}/args\ncat {tmp_path}/airflow.log\n'
                       f"exit {exit_status}\n")
    airflow.chmod(0o755)
    return local / "run-dag.sh"


def run(script: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "RECFORGE_HOME": str(tmp_path / "home")}
    return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=60)


def test_log_summary_and_status(tmp_path):
    script = fake_repo(tmp_path, exit_status=3)
    result = run(script, tmp_path, "nightly_retrain", "1998-04-22", "-c", '{"families": ["din"]}')
    assert result.returncode == 3
    assert (tmp_path / "args").read_text().split() == ["test", "nightly_retrain", "1998-04-22", "-c", "{\"families\":",
                                                       "[\"din\"]}"]
    log = tmp_path / "home" / "nightly_retrain-1998-04-22.log"
    assert log.read_text() == AIRFLOW_LOG
    lines = result.stdout.splitlines()
    assert lines[0].startswith("nightly_retrain for 1998-04-22 (")
    assert "  done: ingest" in lines and lines.count("  done: train [2]") == 1
    assert any("data checks failed for partition 1998-04-22" in line for line in lines)
    assert "  - expect_column_values_to_be_between(rating, 1..5): 3 of 400 rows unexpected" in lines
    assert not any("noise" in line or "profiled" in line for line in lines)  # profiled: a profile_variants line
    assert lines[-1] == f"log: {log}"


def test_dag_specific_key_lines_and_success(tmp_path):
    script = fake_repo(tmp_path, exit_status=0)
    result = run(script, tmp_path, "profile_variants", "2026-11-25T23:40:00+00:00")
    assert result.returncode == 0
    assert "  profiled dlrm/fp32 on cpu-onnxruntime" in result.stdout.splitlines()
    assert (tmp_path / "home" / "profile_variants-2026-11-25T234000.log").is_file()
    assert (tmp_path / "args").read_text().split() == ["test", "profile_variants", "2026-11-25T23:40:00+00:00",
                                                       "-c", "{}"]


def test_help_and_usage_errors(tmp_path):
    script = fake_repo(tmp_path, exit_status=0)
    help_run = run(script, tmp_path, "--help")
    assert help_run.returncode == 0 and help_run.stdout.startswith("usage: infra/local/run-dag.sh")
    assert run(script, tmp_path).returncode == 2
    assert run(script, tmp_path, "dag", "day", "extra").returncode == 2
    assert not (tmp_path / "args").exists()
