"""infra/local/dag_test_runner.py copies what a task prints or logs, at the file-descriptor level (prints,
logging, child processes), to the task's log file for the UI, while the command's own output stays whole and in
order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, subprocess, sys
from pathlib import Path
sys.path.insert(0, {folder!r})
from dag_test_runner import TaskLogFiles

tasks = TaskLogFiles()
print("before the task")
tasks.open(Path({path!r}))
print("task print", flush=False)
sys.stderr.write("task stderr\\n")
os.write(1, b"task fd write " + b"x" * 200000 + b"\\n")  # more than one pipe read
subprocess.run(["echo", "task child process"], check=True)
tasks.close()
print("after the task")
tasks.restore()
print("restored")
"""


def test_a_tasks_output_goes_to_its_log_file_and_to_the_command_output(tmp_path):
    log = tmp_path / "logs" / "task_id=t" / "attempt=1.log"
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(folder=str(REPO / "infra/local"), path=str(log))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    task_lines = log.read_text().splitlines()
    # every kind of output is there (their order depends on when Python flushes its stdout buffer)
    assert {"task print", "task stderr", "task child process"} <= set(task_lines)
    assert any(line == "task fd write " + "x" * 200000 for line in task_lines)
    assert not any(word in log.read_text() for word in ("before the task", "after the task", "restored", "\x1e"))
    stdout = out.stdout.splitlines()
    assert stdout[0] == "before the task" and stdout[-2:] == ["after the task", "restored"]
    assert "task print" in stdout and "task child process" in stdout and "\x1e" not in out.stdout
    assert out.stderr == "task stderr\n"
