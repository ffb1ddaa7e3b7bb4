"""`airflow dags test` as infra/local/airflow.sh runs it, with what the Airflow UI needs from such a run.

Airflow 3.3's in-process test run (``dag.test()``) leaves two things wrong in the UI, both fixed here:

- its DagRun starts at the logical date (apache/airflow#66127): a nightly run for the data day 1998-04-22 shows
  that start date and a duration of ten thousand days. Here the run starts at the wall-clock time.
- its tasks log to this command's output only, so the UI's log view finds no file ("Log file not found on
  worker"). Here everything a task prints or logs is also written to the file the API server reads:
  ``[logging] base_log_folder`` / the run's log filename template (dag_id=.../run_id=.../task_id=.../attempt=N.log).

Both fixes replace a function of Airflow's own modules for this process (``get_or_create_dagrun``, ``_run_task``)
and so follow the Airflow version pinned in requirements.lock; tests/ui/test_airflow_ui.py checks both in the UI.

Usage: python infra/local/dag_test_runner.py DAG_ID [LOGICAL_DATE] [other `airflow dags test` options]
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

SYNC_MARK = b"\x1erecforge-dag-test-sync\x1e"  # written into a stream to know when all before it was copied


class StreamTee:
    """One of this process's output file descriptors, copied to where it went before and to the current task's
    log file (when one is open). The copy runs in a thread that reads a pipe put in the descriptor's place. The log
    file gets whole lines only (a partial line waits for its end or the next sync), so the lines of stdout and
    stderr never cut into each other there."""

    def __init__(self, fd: int, tasks: TaskLogFiles) -> None:
        self.fd, self.tasks = fd, tasks
        self.original = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self.read_end = read_end
        self.synced = threading.Event()
        self.partial = b""  # the end of the last chunk after its last newline, not yet in the log file
        self.lock = threading.Lock()
        threading.Thread(target=self._copy, name=f"tee-fd{fd}", daemon=True).start()

    def _copy(self) -> None:
        carry = b""
        while chunk := os.read(self.read_end, 65536):
            data = carry + chunk
            while (at := data.find(SYNC_MARK)) >= 0:
                self._emit(data[:at])
                data = data[at + len(SYNC_MARK):]
                self.synced.set()
            keep = next((n for n in range(len(SYNC_MARK) - 1, 0, -1) if data.endswith(SYNC_MARK[:n])), 0)
            carry = data[len(data) - keep:] if keep else b""
            self._emit(data[:len(data) - keep])

    def _emit(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.original, view):]
        with self.lock:
            data = self.partial + data
            end = data.rfind(b"\n") + 1
            self.partial = data[end:]
        self.tasks.write(data[:end])

    def sync(self) -> None:
        """Return once everything written to the descriptor so far has been copied (a partial last line too)."""
        self.synced.clear()
        os.write(self.fd, SYNC_MARK)
        self.synced.wait(timeout=10)
        with self.lock:
            rest, self.partial = self.partial, b""
        self.tasks.write(rest)


class TaskLogFiles:
    """The log file of the task running now, written by the StreamTees of stdout and stderr."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.file = None
        self.streams = [StreamTee(fd, self) for fd in (1, 2)]

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.file is not None and data:
                self.file.write(data)
                self.file.flush()

    def sync(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for stream in self.streams:
            stream.sync()

    def open(self, path: Path) -> None:
        self.sync()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self.file = open(path, "ab")  # noqa: SIM115  (closed by close())

    def close(self) -> None:
        self.sync()
        with self.lock:
            if self.file is not None:
                self.file.close()
            self.file = None

    def restore(self) -> None:
        """Everything copied, then stdout and stderr back to where they went before."""
        self.sync()
        for stream in self.streams:
            os.dup2(stream.original, stream.fd)


def task_log_path(ti) -> Path:
    """Where the API server looks for the log of this try of ``ti`` (FileTaskHandler's local file)."""
    import jinja2
    from airflow.configuration import conf

    dag_run = ti.get_dagrun()
    template = dag_run.get_log_template().filename
    date = (dag_run.logical_date or dag_run.run_after).isoformat()
    relative = jinja2.Template(template).render(ti=ti, ts=date, try_number=ti.try_number)
    return Path(conf.get("logging", "base_log_folder")).expanduser() / relative


def main(argv: list[str]) -> int:
    from airflow.__main__ import main as airflow_main
    from airflow.models import dagrun
    from airflow.sdk.definitions import dag as sdk_dag

    create_run, run_task = dagrun.get_or_create_dagrun, sdk_dag._run_task
    tasks = TaskLogFiles()

    def create_run_starting_now(**kwargs):
        return create_run(**(kwargs | {"start_date": datetime.now(UTC)}))

    def run_task_with_log_file(*, ti, **kwargs):
        try:
            tasks.open(task_log_path(ti))
        except Exception as err:  # the task runs anyway; only its log view in the UI is missing
            print(f"warning: no log file for {ti.task_id} in the UI: {err}", file=sys.stderr)
        try:
            return run_task(ti=ti, **kwargs)
        finally:
            tasks.close()

    # dag.test() imports both by name when it runs, so replacing the module attributes is enough
    dagrun.get_or_create_dagrun = create_run_starting_now
    sdk_dag._run_task = run_task_with_log_file
    sys.argv = ["airflow", "dags", "test", *argv]
    try:
        airflow_main()
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        tasks.restore()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
