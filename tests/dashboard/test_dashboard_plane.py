"""The dashboard's Triggers and Views pages in headless Chromium against a real gateway, real containers and a
real data file: a hook auto-disabled after 3 faults shown as disabled, enabled again from the page (confirmed,
audited as the signed-in user, the CLI agreeing), a manual trigger run from the page, a view's hit rate on the
page equal to /metrics, the onCommit events' summary equal to `fnctl events ls -o json` and a dead letter
replayed from the page, and 403 for a user without the grants. Screenshots go to docs/screenshots/."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import browser_fixture, screenshot, sign_in, text_of, wait_for
from dashboard_helpers import api, dashboard_project, key_for
from polling import wait_until
from rollout_helpers import Rollouts, call
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.docker

HANDLER = """\
def handler(event, context):
    if event.get("event") == "onCommit":  # jobs-notify: fails until switches/fixed exists
        try:
            context.db["switches"].get("fixed")
        except context.db.NotFound:
            raise RuntimeError("not fixed yet")
        return {"delivered": event["eventId"]}
    if event.get("trigger") == "flaky-hook":
        raise RuntimeError("flaky is broken")
    if "customer" in event:  # orders-view
        docs = context.db["orders"].find({"customer": event["customer"]})["documents"]
        return {"customer": event["customer"], "count": len(docs)}
    return {"manual": event}  # the manual trigger, and the health check
"""

MANIFESTS = (
    """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: plane}
spec:
  runtime: python3.11
  source: ../functions/plane
  handler: main.handler
  runAs: function
  limits: {timeout: 5s, memory: 64Mi}
  scaling: {minInstances: 1, maxInstances: 2, concurrency: 8}
  access: {roles: [operator, viewer]}
  healthCheck:
    - event: {probe: true}
"""
    + "".join(
        f"---\napiVersion: fnctl/v1\nkind: Collection\nmetadata: {{name: {c}}}\nspec: {{schema: {{type: object}}}}\n"
        for c in ("orders", "flaky", "jobs", "switches")
    )
    + textwrap.dedent("""\
    ---
    apiVersion: fnctl/v1
    kind: Trigger
    metadata: {name: flaky-hook}
    spec: {function: plane, on: {collection: flaky, event: beforeCreate}, order: 2}
    ---
    apiVersion: fnctl/v1
    kind: Trigger
    metadata: {name: report}
    spec: {function: plane, manual: {event: {report: default}}}
    ---
    apiVersion: fnctl/v1
    kind: Trigger
    metadata: {name: jobs-notify}
    spec: {function: plane, on: {collection: jobs, event: onCommit}, retry: {maxAttempts: 2, backoff: 100ms}}
    ---
    apiVersion: fnctl/v1
    kind: View
    metadata: {name: orders-view}
    spec: {function: plane, cache: {ttl: 5m}}
    """)
)

POLICY = """\
apiVersion: fnctl/v1
kind: Policy
metadata: {name: dashboard}
spec:
  roles:
    operator: {ui: ["*"], run: [report], invoke: [plane], read: ["*"], write: ["*"]}
    viewer: {ui: [read], invoke: [plane], read: ["*"], write: ["*"]}
    "function:plane": {read: ["*"], write: ["*"]}
"""


@pytest.fixture
def setup(tmp_path: Path, docker_client: Any, base_image: str) -> Iterator[Rollouts]:
    with dashboard_project(tmp_path / "project", docker_client, base_image) as rollouts:
        root = rollouts.project.root
        (root / "functions" / "plane").mkdir(parents=True)
        (root / "functions" / "plane" / "main.py").write_text(HANDLER, encoding="utf-8")
        (root / "manifests" / "plane.yaml").write_text(MANIFESTS, encoding="utf-8")
        (root / "manifests" / "policy.yaml").write_text(POLICY, encoding="utf-8")
        rollouts.project.ok("apply")
        rollouts.start_gateway()
        yield rollouts


browser = browser_fixture()


def _press(driver: WebDriver, button: str) -> str:
    """Press a button that asks first; confirm; return what the confirmation said."""
    wait_for(driver, f"the {button} button", lambda d: d.find_elements(By.ID, button))
    driver.find_element(By.ID, button).click()
    wait_for(driver, "the confirmation", lambda d: d.find_element(By.ID, "confirm").is_displayed())
    asked = text_of(driver, "#confirm-text")
    driver.find_element(By.ID, "confirm-ok").click()
    return asked


def _write(setup: Rollouts, key: str, collection: str, doc_id: str, data: Any) -> int:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    path = f"/v1/collections/{collection}/docs?id={doc_id}"
    return call(setup.port, "POST", path, json.dumps(data).encode(), headers)[0]


def _cli_triggers(setup: Rollouts) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in json.loads(setup.project.ok("triggers", "-o", "json").out)}


def _ui_audit(setup: Rollouts, action: str) -> list[str]:
    """The actors of the deploy audit's `action` records (`fnctl audit -o json`)."""
    records = json.loads(setup.project.ok("audit", "--limit", "1000", "-o", "json").out)
    return [r["actor"] for r in records if r["action"] == action]


def _metrics(setup: Rollouts, view: str) -> dict[str, float]:
    text = call(setup.port, "GET", "/metrics")[2].decode()
    found: dict[str, float] = {}
    for name in ("hits_total", "misses_total", "invalidations_total", "hit_ratio"):
        prefix = f'fnctl_view_{name}{{view="{view}"}} '
        found[name] = next(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))
    return found


def test_a_trigger_disabled_after_3_faults_enabled_and_a_manual_run_from_the_page(
    setup: Rollouts, browser: WebDriver
) -> None:
    operator, viewer = key_for(setup, "operator"), key_for(setup, "viewer")
    principal = api(setup, "/v1/ui/session", operator)[1]["principal"]
    assert [_write(setup, operator, "flaky", f"f{i}", {"n": i}) for i in range(3)] == [502, 502, 502]
    assert _write(setup, operator, "flaky", "f3", {"n": 3}) == 503  # disabled: refuses the writes it guards
    listed = api(setup, "/v1/triggers", operator)[1]
    assert listed == json.loads(setup.project.ok("triggers", "-o", "json").out)  # the CLI's own JSON
    flaky = next(t for t in listed if t["name"] == "flaky-hook")
    assert (flaky["disabled"], flaky["faults"], flaky["order"], flaky["failurePolicy"]) == (True, 3, 2, "fail")

    sign_in(browser, setup.url, operator)
    browser.get(f"{setup.url}/ui/#/triggers")
    wait_for(browser, "flaky-hook shown disabled", lambda d: "disabled since" in text_of(d, "#state-flaky-hook"))
    row = text_of(browser, "tr:has([data-trigger='flaky-hook'])")
    assert "flaky is broken" in row and "flaky beforeCreate (order 2)" in row and "\t3\t" in row, row
    assert text_of(browser, "#state-report") == "enabled" and not browser.find_elements(By.ID, "enable-report")
    screenshot(browser, "triggers-disabled")

    asked = _press(browser, "enable-flaky-hook")
    assert "turns the trigger back on and resets its count of faults" in asked
    wait_for(browser, "the enable's outcome", lambda d: "Enable flaky-hook: done" in text_of(d, "#action-result"))
    wait_for(browser, "flaky-hook shown enabled", lambda d: text_of(d, "#state-flaky-hook") == "enabled")
    cli = _cli_triggers(setup)["flaky-hook"]
    assert (cli["disabled"], cli["faults"]) == (False, 0)
    assert _ui_audit(setup, "trigger-enable") == [f"ui:{principal}"]
    # the gateway runs the hook again (and it faults again: a 502, not the disabled trigger's 503)
    wait_until(lambda: _write(setup, operator, "flaky", "f-again", {}) == 502, what="flaky-hook running again")

    # a manual run from the page, with an event: the function's answer, as invoke shows it
    browser.find_element(By.ID, "run-event").send_keys('{"from": "the page"}')
    browser.find_element(By.ID, "run-report").click()
    wait_for(browser, "the run's result", lambda d: "report: 200" in text_of(d, "#run-result"))
    assert json.loads(text_of(browser, "#run-result").split("\n", 1)[1]) == {"manual": {"from": "the page"}}
    screenshot(browser, "triggers-run")

    def run_audited() -> bool:  # the gateway ships invocation rows to the store within a quarter second
        rows = json.loads(setup.project.ok("audit", "--invocations", "-o", "json").out)
        return any(r["function"] == "plane" and r["principal"] == principal and r["status"] == 200 for r in rows)

    wait_until(run_audited, what="the page's run in the invocation audit")

    # without the grants: 403 for Enable, Run and Replay, on the API and on the page
    assert api(setup, "/v1/triggers/flaky-hook/enable", viewer, "POST", {})[0] == 403
    assert api(setup, "/v1/triggers/report/run", viewer, "POST", {})[0] == 403
    assert api(setup, "/v1/events/replay", viewer, "POST", {"trigger": "jobs-notify"})[0] == 403
    assert api(setup, "/v1/triggers/no-such/enable", operator, "POST", {})[0] == 404
    assert _ui_audit(setup, "trigger-enable") == [f"ui:{principal}"]  # nothing more enabled
    sign_in(browser, setup.url, viewer)
    browser.get(f"{setup.url}/ui/#/triggers")
    wait_for(browser, "the viewer's run button", lambda d: d.find_elements(By.ID, "run-report"))
    browser.find_element(By.ID, "run-report").click()
    wait_for(browser, "the refused run", lambda d: "report: 403" in text_of(d, "#run-result"))
    assert "needs a Policy granting `run`" in text_of(browser, "#run-result")


def test_a_views_hit_rate_equals_the_metrics_and_a_dead_letter_replayed_from_the_page(
    setup: Rollouts, browser: WebDriver
) -> None:
    operator, viewer = key_for(setup, "operator"), key_for(setup, "viewer")
    principal = api(setup, "/v1/ui/session", operator)[1]["principal"]
    assert _write(setup, operator, "orders", "o1", {"customer": "ada"}) == 201
    for _ in range(3):  # a miss, then two hits
        assert api(setup, "/v1/views/orders-view?customer=ada", operator)[0] == 200
    assert _write(setup, operator, "orders", "o2", {"customer": "ada"}) == 201  # evicts the entry
    assert api(setup, "/v1/views/orders-view?customer=ada", operator)[1] == {"customer": "ada", "count": 2}
    metrics = _metrics(setup, "orders-view")
    assert (metrics["hits_total"], metrics["misses_total"], metrics["invalidations_total"]) == (2, 2, 1)
    (shown,) = api(setup, "/v1/views", operator)[1]
    assert (
        shown["function"] == "plane" and shown["revision"] == 1 and shown["cache"] == {"ttl": "5m", "perCaller": False}
    )
    assert [shown[k] for k in ("hits", "misses", "invalidations", "hitRate")] == [2, 2, 1, metrics["hit_ratio"]]

    # an onCommit event that fails twice: a dead letter
    assert _write(setup, operator, "jobs", "j1", {"n": 1}) == 201

    def dead() -> list[dict[str, Any]]:
        return list(setup.project.ok("events", "ls", "--status", "dead", "-o", "json").json())

    wait_until(dead, what="j1's event to become a dead letter", timeout=30)
    listed = json.loads(setup.project.ok("events", "ls", "--limit", "1000", "-o", "json").out)
    assert api(setup, "/v1/events?limit=1000", operator)[1] == listed  # the CLI's own JSON
    counted = Counter((e["trigger"], e["state"]) for e in listed)
    summary = api(setup, "/v1/events/summary", operator)[1]
    assert summary == {
        t: {s: counted[(t, s)] for s in ("pending", "delivered", "dead")} for t in {e["trigger"] for e in listed}
    }
    assert summary["jobs-notify"]["dead"] == 1

    sign_in(browser, setup.url, operator)
    browser.get(f"{setup.url}/ui/#/views")
    wait_for(browser, "the view's hit rate", lambda d: text_of(d, "#hit-rate-orders-view"))
    assert text_of(browser, "#hit-rate-orders-view") == f"{metrics['hit_ratio'] * 100:.1f}%" == "50.0%"
    row = text_of(browser, "tr:has([data-view='orders-view'])").split("\t")
    assert row[4:7] == ["2", "2", "1"], row
    assert text_of(browser, "tr:has([data-events='jobs-notify'])").split("\t")[1:4] == ["0", "0", "1"]
    assert "not fixed yet" in text_of(browser, "#view")
    screenshot(browser, "views")

    assert _write(setup, operator, "switches", "fixed", {}) == 201
    asked = _press(browser, "replay-jobs-notify")
    assert "dead letters pending again" in asked
    wait_for(browser, "the replay's outcome", lambda d: "1 event(s) pending again" in text_of(d, "#action-result"))
    wait_until(
        lambda: json.loads(setup.project.ok("events", "ls", "--status", "delivered", "-o", "json").out),
        what="the replayed event to be delivered",
    )
    assert dead() == [] and _ui_audit(setup, "events-replay") == [f"ui:{principal}"]
    assert api(setup, "/v1/events/replay", viewer, "POST", {"trigger": "jobs-notify"})[0] == 403
    assert api(setup, "/v1/events/replay", operator, "POST", {"seqs": [1]})[0] == 400
