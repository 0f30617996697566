"""The dashboard in a real browser (Debian's headless Chromium) against a real gateway (`fnctl serve` with
`gateway.ui = true`) and real containers: sign-in, the 403 of a user without the grant, a canary watched step
by step and promoted at its gate, a bad canary's failed analysis and rollback, and the /v1/ endpoints giving
exactly what the CLI prints with `-o json`. Each page's screenshot is written to docs/screenshots/.
"""

from __future__ import annotations

import json

import pytest
from browser_helpers import browser_fixture, screenshot, sign_in, text_of, wait_for
from dashboard_helpers import api, key_for, setup_fixture, start
from rollout_helpers import Load, Rollouts, call
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

STEPPED = """\
rollout:
  strategy: canary
  scaleDownDelay: 1s
  steps:
    - setWeight: 20
    - pause: 3s
    - setWeight: 50
    - pause: {}
    - setWeight: 80
"""

BAD = """\
rollout:
  strategy: canary
  scaleDownDelay: 1s
  steps:
    - setWeight: 50
    - analysis: {maxErrorRate: 0.05, minRequests: 20, interval: 1s}
    - setWeight: 80
"""


setup = setup_fixture()
browser = browser_fixture()


def _state(driver: WebDriver) -> str:
    return text_of(driver, "#rollout-state")


def _current_step(driver: WebDriver) -> str:
    return text_of(driver, "#steps li[aria-current=step]")


@pytest.mark.docker
def test_sign_in_pages_same_json_as_the_cli_and_403_without_the_grant(setup: Rollouts, browser: WebDriver) -> None:
    key = start(setup, STEPPED)
    base = setup.url
    # anonymous: the login form and nothing else; the API answers 401
    browser.get(f"{base}/ui/")
    assert browser.find_element(By.ID, "login").is_displayed()
    assert not browser.find_element(By.ID, "nav").is_displayed()
    assert browser.find_element(By.ID, "view").text == ""
    assert call(setup.port, "GET", "/v1/functions")[0] == 401
    screenshot(browser, "login")
    # a user whose roles have no `ui` grant: 403, on the page and from the API
    nobody = key_for(setup, "nobody")
    sign_in(browser, base, nobody)
    wait_for(browser, "the 403", lambda d: "Forbidden" in text_of(d, "#view"))
    assert api(setup, "/v1/functions", nobody)[0] == 403
    screenshot(browser, "forbidden")
    # a viewer may read but not act
    viewer = key_for(setup, "viewer")
    assert api(setup, "/v1/functions", viewer)[0] == 200
    assert api(setup, "/v1/functions/fn/promote", viewer, "POST")[0] == 403
    # the operator: functions list, one function, the audit log
    sign_in(browser, base, key)
    wait_for(browser, "the functions table", lambda d: "fn" in text_of(d, "#view table"))
    assert "1/1 healthy" in text_of(browser, "#view table")
    assert not browser.find_element(By.ID, "login").is_displayed()  # signed in: the form is gone
    screenshot(browser, "functions")
    # the same numbers as the CLI: /v1/ gives what `-o json` prints
    assert api(setup, "/v1/functions", key)[1] == json.loads(setup.project.ok("status", "-o", "json").out)
    assert api(setup, "/v1/functions/fn/history", key)[1] == json.loads(
        setup.project.ok("history", "fn", "-o", "json").out
    )
    cli_audit = json.loads(setup.project.ok("audit", "--function", "fn", "-o", "json").out)
    assert api(setup, "/v1/audit?function=fn", key)[1] == cli_audit
    browser.get(f"{base}/ui/#/function/fn")
    wait_for(browser, "the revision history", lambda d: "ready" in text_of(d, "#view table"))
    screenshot(browser, "function")
    browser.get(f"{base}/ui/#/audit/fn")
    wait_for(browser, "the audit table", lambda d: "apply" in text_of(d, "#view table"))
    screenshot(browser, "audit")
    # the page's headers: strict CSP, no sniffing, no framing
    _, headers, _ = call(setup.port, "GET", "/ui/")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.docker
def test_watch_a_canary_step_by_step_then_promote_at_the_gate(setup: Rollouts, browser: WebDriver) -> None:
    key = start(setup, STEPPED)
    sign_in(browser, setup.url, key)
    setup.project.ok("apply", "--no-wait")
    browser.get(f"{setup.url}/ui/#/rollout/fn")
    seen: list[str] = []

    def at_gate(driver: WebDriver) -> bool:
        step = _current_step(driver)
        if step and (not seen or seen[-1] != step):
            seen.append(step)
        return step.startswith("4.") and _state(driver) == "paused"

    wait_for(browser, "the rollout to stop at its gate", at_gate, timeout=60)
    assert len(seen) >= 2, seen  # the page followed the steps as they moved (step 2 lasts 3 s, then 3, 4)
    assert "revision 2: 50%" in text_of(browser, "#weights")
    screenshot(browser, "rollout-gate")
    browser.find_element(By.ID, "do-promote").click()
    dialog = browser.find_element(By.ID, "confirm")
    assert dialog.is_displayed() and "past its current pause" in text_of(browser, "#confirm-text")
    browser.find_element(By.ID, "confirm-ok").click()
    wait_for(browser, "the rollout to complete", lambda d: _state(d) == "completed", timeout=60)
    assert setup.routes()[2] == 100
    screenshot(browser, "rollout-completed")
    status = json.loads(setup.project.fnctl("rollout", "status", "fn", "-o", "json").out)
    assert api(setup, "/v1/functions/fn/rollout", key)[1] == status
    promoted = json.loads(setup.project.ok("audit", "--function", "fn", "-o", "json").out)
    assert any(r["command"] == "promote" and r["actor"].startswith("ui:key:") for r in promoted), promoted[:3]


@pytest.mark.docker
def test_a_bad_canary_fails_its_analysis_and_the_page_shows_the_rollback(setup: Rollouts, browser: WebDriver) -> None:
    key = start(setup, BAD, second="bad", fail_rate=0.5)
    sign_in(browser, setup.url, key)
    with Load(setup.port, rate=60):
        setup.project.fnctl("apply", "--no-wait")
        browser.get(f"{setup.url}/ui/#/rollout/fn")
        wait_for(browser, "the rollout to be aborted", lambda d: _state(d) == "aborted", timeout=90)
    assert "error rate" in text_of(browser, "#rollout-reason")
    assert "fail" in text_of(browser, "#view table")  # the analysis table: its failed measurement
    # the failed measurement's figure against its threshold, in the table and as a red tick on the chart
    assert "> max 5.0%" in text_of(browser, "#view table")
    marks = browser.execute_script(
        "return [...document.querySelectorAll('#weights-chart line.mark.fail')].map((m) => m.textContent)"
    )
    assert marks and all("> max 5.0%" in m for m in marks), marks
    assert "revision 1: 100%" in text_of(browser, "#weights")
    screenshot(browser, "rollout-aborted")
    assert setup.routes() == {1: 100}
