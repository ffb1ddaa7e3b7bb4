"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by selenium, for the MLflow UI tests: start
it, wait for text on a page, and save screenshots as test artifacts (under the test's tmp folder, and also under
``$RECFORGE_UI_SCREENSHOTS`` when set)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--window-size=1600,1000")


def start_chromium():
    """A selenium driver of headless Chromium; skips the test when Chromium or its driver is not installed
    (``infra/local/system-packages.sh`` installs both)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium/chromedriver not installed: run infra/local/system-packages.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.binary_location = chromium
    return webdriver.Chrome(options=options, service=Service(driver_path))


def page_text(driver) -> str:
    return driver.find_element("tag name", "body").text


def wait_for_text(driver, *texts: str, timeout: float = 60.0) -> str:
    """The page's text once it contains every one of ``texts`` (the UI renders after its API calls return)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page_text(driver)
        if all(t in text for t in texts):
            return text
        time.sleep(0.5)
    missing = [t for t in texts if t not in text]
    raise AssertionError(f"{driver.current_url}: {missing} not on the page after {timeout:.0f} s; it shows: "
                         f"{text[:1500]!r}")


def close_assistant(driver) -> None:
    """Close MLflow 3's assistant side panel when it is open (it covers a third of the page in screenshots)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close'], button[aria-label='close']"):
        try:
            if button.is_displayed():
                button.click()
                time.sleep(0.3)
                return
        except Exception:  # noqa: BLE001 - a button that went away meanwhile
            continue


class Screenshots:
    """Where a test's screenshots go: ``folder`` and, when set, ``$RECFORGE_UI_SCREENSHOTS``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        extra = os.environ.get("RECFORGE_UI_SCREENSHOTS")
        self.extra = Path(extra) if extra else None
        if self.extra:
            self.extra.mkdir(parents=True, exist_ok=True)

    def save(self, driver, name: str) -> Path:
        path = self.folder / name
        assert driver.save_screenshot(str(path)), f"screenshot {name} not written"
        if self.extra:
            shutil.copy2(path, self.extra / name)
        return path
