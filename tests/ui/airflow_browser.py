"""What the Airflow UI browser tests drive: a real Airflow API server in its own AIRFLOW_HOME, started through
infra/local/airflow.sh on 127.0.0.1, and headless Chromium (Debian's chromium + chromedriver) through selenium.
Screenshots go to the test's folder and, when set, to ``$RECFORGE_UI_SCREENSHOTS``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from recforge.core.ports import free_ports
from tests.conftest import REPO

AIRFLOW_SH = REPO / "infra/local/airflow.sh"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--window-size=1400,1000")


def airflow_env(home: Path, port: int) -> dict[str, str]:
    """The environment of an isolated Airflow: its own RECFORGE_HOME (hence AIRFLOW_HOME, fleet and rollout state),
    every UI user an admin (no login page), no MLflow to reach."""
    return os.environ | {
        "RECFORGE_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW_PORT": str(port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # discard port: a task that reaches MLflow fails at once
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }


class AirflowServer:
    """An Airflow API server (UI + REST API) on 127.0.0.1 over its own metadata DB."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_ports(1)[0]
        self.env = airflow_env(home, self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(AIRFLOW_SH), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> None:
        out = self.airflow("init")
        assert out.returncode == 0, out.stdout + out.stderr
        log = open(self.home / "api-server.log", "w")  # noqa: SIM115  (the server's whole life)
        self.process = subprocess.Popen([str(AIRFLOW_SH), "api-server", "--workers", "1"], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            assert self.process and self.process.poll() is None, \
                (self.home / "api-server.log").read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(f"the Airflow API server did not answer in {timeout} s: "
                             + (self.home / "api-server.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def api(self, path: str, **params: Any) -> Any:
        response = requests.get(f"{self.url}/api/v2/{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.api(f"dags/{dag_id}/dagRuns", order_by="-start_date")["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.api(f"dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}


def quote(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's package) under selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "chromium and chromedriver are missing: run infra/local/system-packages.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield session
    finally:
        session.quit()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """The first truthy value of ``condition()`` within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        if value := condition():
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)


def page_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text


class Screenshots:
    """Screenshots as test artifacts: in ``folder``, and also in ``$RECFORGE_UI_SCREENSHOTS`` when it is set."""

    def __init__(self, folder: Path) -> None:
        self.folders = [folder] + ([Path(os.environ["RECFORGE_UI_SCREENSHOTS"])]
                                   if os.environ.get("RECFORGE_UI_SCREENSHOTS") else [])
        self.taken: dict[str, str] = {}

    def take(self, browser, name: str, what: str) -> Path:
        paths = []
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            paths.append(folder / f"{name}.png")
            assert browser.save_screenshot(str(paths[-1])), f"no screenshot {paths[-1]}"
        self.taken[str(paths[-1])] = what
        print(f"screenshot {paths[-1]}: {what}")
        return paths[-1]

    def write_index(self) -> None:
        """index.json beside the screenshots: each one with a line saying what it shows."""
        for folder in self.folders:
            index = folder / "index.json"
            known = json.loads(index.read_text()) if index.is_file() else {}
            index.write_text(json.dumps(known | {Path(p).name: w for p, w in self.taken.items()}, indent=1))
