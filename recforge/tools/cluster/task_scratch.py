"""Each task a cluster worker runs gets a fresh scratch folder, deleted when the task ends: local disk is scratch that
vanishes between tasks, so a task that read another task's local file would fail in the cluster.

``open_task_scratch`` and ``delete_task_scratch`` are Celery's ``task_prerun``/``task_postrun`` handlers
(connected by recforge.tools.cluster.celery_config, the workers' Celery config). They run in the pool process that
runs the task, before and after it; Airflow's task process is forked from that process, so the ``RECFORGE_WORK_DIR``
set before is the task's. Each folder's creation and deletion is a JSON line of the worker's ``scratch.jsonl`` (what
the cluster's tests check). Outside a worker (``RECFORGE_WORKER_SCRATCH`` unset: the scheduler also loads the
config) they do nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

SCRATCH_ROOT_ENV = "RECFORGE_WORKER_SCRATCH"  # the worker's scratch folder (set for the workers only)
SCRATCH_LOG_ENV = "RECFORGE_SCRATCH_LOG"  # its scratch.jsonl
WORK_DIR_ENV = "RECFORGE_WORK_DIR"  # what recforge.core.config.work_dir() reads

log = logging.getLogger(__name__)


def task_label(args: tuple) -> str:
    """``dag_id/task_id[map_index]#try`` of the Airflow workload a Celery task carries ("" if it is not one)."""
    try:
        ti = json.loads(args[0])["ti"]
    except (IndexError, TypeError, ValueError, KeyError):
        return ""
    index = ti.get("map_index", -1)
    return f"{ti['dag_id']}/{ti['task_id']}" + (f"[{index}]" if index not in (-1, None) else "") \
        + f"#{ti.get('try_number', '?')}"


def folder_name(label: str, celery_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label or "task") + "-" + celery_id[:8]


def record(event: dict, path: str | Path | None = None) -> None:
    """Append ``event`` (with pid and time) to ``path``, by default the worker's scratch.jsonl."""
    path = path or os.environ.get(SCRATCH_LOG_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(event | {"pid": os.getpid(), "at": round(time.time(), 3)}) + "\n")


def folder_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def wipe(root: Path) -> int:
    """Delete everything in ``root`` (a worker's scratch when no task runs: after a crash); returns the entries."""
    root.mkdir(parents=True, exist_ok=True)
    entries = list(root.iterdir())
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(entries)


def open_task_scratch(task_id: str = "", args: tuple = (), **_) -> None:
    root = os.environ.get(SCRATCH_ROOT_ENV)
    if not root:
        return
    label = task_label(args)
    folder = Path(root) / folder_name(label, task_id or "")
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[WORK_DIR_ENV] = str(folder)
    record({"event": "created", "task": label, "celery_id": task_id, "dir": str(folder)})


def delete_task_scratch(task_id: str = "", args: tuple = (), **_) -> None:
    root = os.environ.get(SCRATCH_ROOT_ENV)
    if not root:
        return
    folder = Path(os.environ.get(WORK_DIR_ENV, ""))
    os.environ[WORK_DIR_ENV] = root
    if folder.parent != Path(root):  # not a task folder of this worker: nothing of ours to delete
        log.warning("task scratch: %s is not a task folder of %s; not deleting it", folder, root)
        return
    try:
        files, size = folder_size(folder)
        shutil.rmtree(folder)
    except OSError as err:  # never fail the worker over its scratch; the next start wipes what is left
        log.warning("task scratch: could not delete %s: %s", folder, err)
        return
    record({"event": "deleted", "task": task_label(args), "celery_id": task_id, "dir": str(folder),
            "files": files, "bytes": size})
