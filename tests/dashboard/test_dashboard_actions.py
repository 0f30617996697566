"""The dashboard's buttons and the pages the first end-to-end tests left out, in headless Chromium against a real
gateway and real containers: abort, retry, promote and roll back from the rollout page (each confirmed first,
cancel doing nothing, each in the audit as the signed-in user), an A/B test's report and verdict equal to
`fnctl abtest report -o json`, the spec diff between two revisions, `/v1/traffic` counting every request, and
open event streams ending when the gateway stops. Screenshots go to docs/screenshots/.
"""

from __future__ import annotations

import http.client
import json
import signal
from typing import Any

import pytest
from browser_helpers import browser_fixture, screenshot, sign_in, text_of, wait_for
from dashboard_helpers import api, setup_fixture, start
from polling import wait_until
from rollout_helpers import Load, Rollouts
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

GATED = """\
rollout:
  strategy: canary
  scaleDownDelay: 1s
  steps:
    - setWeight: 30
    - pause: {}
    - setWeight: 100
"""

AB = """\
rollout:
  strategy: abTest
  scaleDownDelay: 1s
  variants:
    - {name: a, weight: 50, revision: stable}
    - {name: b, weight: 50, revision: new}
  minSamples: 20
"""

IMMEDIATE = "rollout: {strategy: immediate}\n"


setup = setup_fixture()
browser = browser_fixture()


def _state(driver: WebDriver) -> str:
    return text_of(driver, "#rollout-state")


def _press(driver: WebDriver, action: str, confirm: bool = True) -> str:
    """Press a rollout button; return the confirmation's text after confirming or cancelling it."""
    wait_for(driver, f"the {action} button to be enabled", lambda d: d.find_element(By.ID, f"do-{action}").is_enabled())
    driver.find_element(By.ID, f"do-{action}").click()
    wait_for(driver, "the confirmation", lambda d: d.find_element(By.ID, "confirm").is_displayed())
    asked = text_of(driver, "#confirm-text")
    driver.find_element(By.ID, "confirm-ok" if confirm else "confirm-cancel").click()
    wait_for(driver, "the confirmation to close", lambda d: not d.find_element(By.ID, "confirm").is_displayed())
    return asked


def _ui_audit(setup: Rollouts) -> list[dict[str, Any]]:
    """The deploy audit of fn, oldest first, as `fnctl audit -o json` prints it."""
    records = json.loads(setup.project.ok("audit", "--function", "fn", "-o", "json").out)
    return sorted(records, key=lambda r: int(r["id"]))


@pytest.mark.docker
def test_abort_retry_promote_and_roll_back_from_the_page_confirmed_and_audited(
    setup: Rollouts, browser: WebDriver
) -> None:
    key = start(setup, GATED)
    principal = api(setup, "/v1/ui/session", key)[1]["principal"]
    assert setup.project.fnctl("apply").code == 4  # at the gate (pause: {})
    sign_in(browser, setup.url, key)
    browser.get(f"{setup.url}/ui/#/rollout/fn")
    wait_for(browser, "the rollout at its gate", lambda d: _state(d) == "paused")
    assert api(setup, "/v1/functions/fn/retry", key, "POST")[0] == 409  # nothing aborted to retry
    for path in ("/v1/functions/nope/rollout", "/v1/functions/nope/abtest", "/v1/functions/nope/history"):
        assert api(setup, path, key)[0] == 404, path  # no such function (docs/ui.md), not "no rollout"
    assert api(setup, "/v1/functions/nope/promote", key, "POST")[0] == 404  # exit 2 on the CLI: not a refusal

    # Cancel: nothing is sent, nothing changes
    asked = _press(browser, "abort", confirm=False)
    assert "sends all traffic back to the stable revision" in asked
    assert text_of(browser, "#action-result") == "" and _state(browser) == "paused"
    assert not [r for r in _ui_audit(setup) if r["actor"].startswith("ui:")]

    # Abort: all traffic back on revision 1, revision 2 quarantined
    _press(browser, "abort")
    wait_for(browser, "the rollout to be aborted", lambda d: _state(d) == "aborted", timeout=60)
    wait_for(browser, "the abort's outcome", lambda d: "Abort: done" in text_of(d, "#action-result"))
    assert setup.routes().get(2, 0) == 0 and setup.routes()[1] == 100
    assert setup.status(2) == "quarantined"
    # the weights chart: axes labelled, a legend naming each revision's colour, the same in its text alternative
    assert "revision 1 (stable): blue line, 100% → 100%" in text_of(browser, "#weights-legend")
    assert "revision 2 (canary): pink line, 0% → 0%" in text_of(browser, "#weights-legend")
    axis = browser.execute_script(
        "return [...document.querySelectorAll('#weights-chart text.axis')].map((t) => t.textContent)"
    )
    assert {"0%", "50%", "100%", "time (UTC)", "weight"} <= set(axis), axis
    label = browser.find_element(By.ID, "weights-chart").get_attribute("aria-label") or ""
    assert label.startswith("Traffic weight per revision over time, 0 to 100%") and "revision 2 (pink" in label
    screenshot(browser, "rollout-abort")

    # Retry: the confirmation says what happens; the revision rolls out again from step 1, to the gate
    asked = _press(browser, "retry")
    assert "again from step 1" in asked
    wait_for(browser, "the retried rollout at its gate", lambda d: _state(d) == "paused", timeout=60)
    retried = api(setup, "/v1/functions/fn/rollout", key)[1]
    assert (retried["state"], retried["step"], retried["reason"]) == ("paused", 2, None)
    assert setup.status(2) != "quarantined"
    assert setup.routes()[2] == 30

    # Promote past the gate, then roll back to revision 1
    _press(browser, "promote")
    wait_for(browser, "the rollout to complete", lambda d: _state(d) == "completed", timeout=60)
    assert setup.routes()[2] == 100
    asked = _press(browser, "rollback")
    assert "previous healthy revision" in asked
    wait_for(browser, "the rollback's outcome", lambda d: "Roll back: done" in text_of(d, "#action-result"), 60)
    assert "Revision 1 takes all traffic again (rolled away from revision 2)" in text_of(browser, "#action-result")
    assert setup.routes()[1] == 100 and setup.routes().get(2, 0) == 0
    screenshot(browser, "rollout-rolled-back")

    # Each action is in the deploy audit, in order, as the signed-in user
    done = [(r["command"], r["actor"]) for r in _ui_audit(setup) if r["actor"].startswith("ui:")]
    buttons = [c for c, _ in done if c in ("abort", "retry", "promote", "rollback")]  # and the steps they drove
    assert list(dict.fromkeys(buttons)) == ["abort", "retry", "promote", "rollback"], done
    assert {a for _, a in done} == {f"ui:{principal}"}, done


@pytest.mark.docker
def test_ab_test_report_page_and_endpoint_give_the_cli_verdict(setup: Rollouts, browser: WebDriver) -> None:
    key = start(setup, AB, fail_rate=0.6)
    assert setup.project.fnctl("apply").code == 4  # an A/B test waits for `promote --variant`
    with Load(setup.port, rate=80) as load:
        wait_until(lambda: len(load.by_revision()) == 2, what="the gateway to route by the A/B split", timeout=20)

        def enough() -> bool:
            report = api(setup, "/v1/functions/fn/abtest", key)[1]
            return all(v["requests"] >= 40 for v in report["variants"])

        wait_until(enough, what="40 requests per variant in the report", timeout=60)
    answered = len([a for a in load.answers if a[1] != 0])

    def settled() -> Any:  # the gateway flushed its metrics: the report counts every answer the load got
        report = api(setup, "/v1/functions/fn/abtest", key)[1]
        return report if sum(v["requests"] for v in report["variants"]) >= answered else None

    report = wait_until(settled, what="the metrics of every request to be flushed", timeout=20)
    cli = setup.project.fnctl("abtest", "report", "fn", "-o", "json")
    assert cli.code == 0, cli.text
    assert report == json.loads(cli.out)  # the endpoint is exactly the CLI's -o json
    comparison = report["comparisons"][0]
    assert comparison["errorRate"]["significant"] is True
    assert "b's error rate is significantly higher" in comparison["verdict"]

    sign_in(browser, setup.url, key)
    browser.get(f"{setup.url}/ui/#/abtest/fn")
    wait_for(browser, "the verdict", lambda d: "vs" in text_of(d, "#verdicts"))
    assert text_of(browser, "#verdicts") == f"b vs a: {comparison['verdict']}"
    text_line = [line for line in setup.project.ok("abtest", "report", "fn").out.splitlines() if " vs " in line]
    assert [line.strip() for line in text_line] == [text_of(browser, "#verdicts")]  # as the CLI's text says it
    shown = text_of(browser, "#view")
    for variant in report["variants"]:
        assert f"{variant['name']}\t{variant['revision']}\t{variant['requests']}\t{variant['errors']}" in shown
    assert "significant" in text_of(browser, "#view table:last-of-type")
    screenshot(browser, "abtest")


@pytest.mark.docker
def test_spec_diff_between_revisions_and_traffic_per_revision(setup: Rollouts, browser: WebDriver) -> None:
    key = start(setup, IMMEDIATE)
    manifest = setup.project.root / "manifests" / "fn.yaml"
    text = manifest.read_text(encoding="utf-8").replace("memory: 64Mi", "memory: 96Mi")
    manifest.write_text(text.replace("  handler: main.handler\n", "  handler: main.handler\n  env: {MODE: two}\n"))
    setup.project.ok("apply")
    assert setup.routes() == {2: 100} or setup.routes() == {2: 100, 1: 0}

    status, diff = api(setup, "/v1/functions/fn/diff?from=1&to=2", key)
    assert status == 200 and (diff["function"], diff["from"], diff["to"]) == ("fn", 1, 2)
    changed = {c["path"]: (c["old"], c["new"]) for c in diff["changes"]}
    assert changed["env.MODE"] == (None, "two")
    assert "64" in json.dumps(changed["limits.memory"][0]) and "96" in json.dumps(changed["limits.memory"][1])
    assert "runtime" not in changed and "handler" not in changed
    assert api(setup, "/v1/functions/fn/diff?from=2&to=2", key)[1]["changes"] == []
    assert api(setup, "/v1/functions/fn/diff?from=1&to=9", key)[0] == 404
    assert api(setup, "/v1/functions/fn/diff?from=one&to=2", key)[0] == 400
    assert api(setup, "/v1/functions/nope/diff?from=1&to=2", key)[0] == 404

    # traffic: every request counted, per revision, the same in /v1/traffic and the function's page data
    with Load(setup.port, rate=40) as load:
        wait_until(lambda: len(load.answers) >= 40, what="40 answers", timeout=30)
    served = load.by_revision()
    assert set(served) == {"2"} and not load.failed()

    def counted() -> Any:
        traffic = api(setup, "/v1/traffic", key)[1]
        points = traffic.get("fn", {}).get("revisions", {}).get("2", [])
        return traffic if sum(p[1] for p in points) == served["2"] else None

    traffic = wait_until(counted, what="/v1/traffic to count every request", timeout=20)
    assert all(p[2] == 0 for p in traffic["fn"]["revisions"]["2"])  # no errors
    assert all(0 <= p[0] <= 300 for p in traffic["fn"]["revisions"]["2"])  # offsets inside the 5-minute window
    assert api(setup, "/v1/functions/fn", key)[1]["traffic"]["revisions"]["2"] == traffic["fn"]["revisions"]["2"]

    sign_in(browser, setup.url, key)
    wait_for(browser, "the functions table", lambda d: "fn" in text_of(d, "#view table"))
    labels = browser.execute_script(
        "return [...document.querySelectorAll('svg.spark')].map((e) => e.getAttribute('aria-label'))"
    )
    assert any(str(label).startswith("revision 2: requests and errors") for label in labels), labels
    browser.get(f"{setup.url}/ui/#/function/fn")
    wait_for(browser, "the compare form", lambda d: text_of(d, "#diff-to") != "")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_for(browser, "the diff", lambda d: "env.MODE" in text_of(d, "#diff-result"))
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#diff-result tbody tr')].map((r) => r.cells[0].innerText)"
    )
    assert sorted(rows) == sorted(changed), rows  # the page shows every change the endpoint gives
    screenshot(browser, "function-diff")


@pytest.mark.docker
def test_open_event_streams_end_when_the_gateway_stops(setup: Rollouts, browser: WebDriver) -> None:
    """SIGTERM ends every open rollout stream cleanly (the last chunk sent), so the drain does not wait for them:
    with a drain timeout far longer than the wait below, a stream left open would hold the gateway up."""
    with (setup.project.root / "fnctl.toml").open("a", encoding="utf-8") as config:
        config.write('drainTimeout = "300s"\n')
    key = start(setup, GATED)
    assert setup.project.fnctl("apply").code == 4
    sign_in(browser, setup.url, key)
    browser.get(f"{setup.url}/ui/#/rollout/fn")
    wait_for(browser, "the page's live stream", lambda d: text_of(d, "#live-status").startswith("Live:"))
    streams = []
    for _ in range(2):
        connection = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=60)
        connection.request("GET", "/v1/functions/fn/rollout/stream", headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/event-stream")
        assert response.readline() == b"event: rollout\n"
        streams.append((connection, response))
    assert setup.gateway is not None
    setup.gateway.send_signal(signal.SIGTERM)
    # Well inside the 300 s drain: nothing held it up (a stream left open would, its keep-alives flowing).
    assert setup.gateway.wait(timeout=60) == 0
    for connection, response in streams:
        rest = response.read()  # to the end of the chunked body: IncompleteRead if the stream were cut off
        assert rest.startswith(b"data: ") and rest.endswith(b"\n\n")
        connection.close()
    wait_for(browser, "the page to say the stream ended", lambda d: "ended" in text_of(d, "#live-status"))
    assert "Reload to reconnect" in text_of(browser, "#live-status")
