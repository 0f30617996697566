"""Headless Chromium for the dashboard's tests and benchmark: Debian's `chromium` driven by its
`chromium-driver` through Selenium, with the flags this closed network needs (no background network calls,
component updates or sync; run as root, without Chromium's own sandbox)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def browser_fixture() -> object:
    """A test module's `browser` fixture, a headless Chromium for each test: assign it to the name `browser`
    (pytest finds fixtures among a module's names)."""

    @pytest.fixture
    def browser() -> Iterator[WebDriver]:
        with chromium() as driver:
            yield driver

    return browser


@contextmanager
def chromium() -> Iterator[WebDriver]:
    with tempfile.TemporaryDirectory(prefix="fnctl-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver: WebDriver, what: str, condition: object, timeout: float = 30.0) -> object:
    """Poll `condition(driver)` until it is truthy; fail naming `what`."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=f"waiting for {what}")  # type: ignore[arg-type]


def text_of(driver: WebDriver, css: str) -> str:
    """The rendered text of the first element matching `css` ("" when none), read in one script: the live
    pages re-render, so an element found in one call may be gone in the next."""
    found = driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)
    return str(found)


def sign_in(driver: WebDriver, base: str, credential: str) -> None:
    driver.get(f"{base}/ui/")
    if not driver.find_element(By.ID, "login").is_displayed():
        driver.find_element(By.ID, "signout").click()
    field = driver.find_element(By.ID, "credential")
    field.send_keys(credential)
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def screenshot(driver: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
