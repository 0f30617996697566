"""The dashboard's data pages in headless Chromium against a real gateway (`fnctl serve`, real data file): a
collection browsed with the signed-in user's own rights (row rules, tenants) through the REST API, and a
document's versions as the change feed records them. Screenshots go to docs/screenshots/."""

from __future__ import annotations

import json
from typing import Any

import pytest
from browser_helpers import browser_fixture, screenshot, sign_in, text_of, wait_for
from dashboard_helpers import api, key_for, setup_fixture
from rollout_helpers import Rollouts, call
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

DATA = """\
apiVersion: fnctl/v1
kind: Collection
metadata: {name: orders}
spec:
  schema: {type: object, required: [item], properties: {item: {type: string}, qty: {type: integer}}}
---
apiVersion: fnctl/v1
kind: Collection
metadata: {name: notes}
spec: {schema: {type: object}}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: shop}
spec:
  roles:
    clerk:
      ui: [read]
      read: [{collection: orders, where: {createdBy: "$caller.id"}}, notes]
      write: [{collection: orders, where: {createdBy: "$caller.id"}}, notes]
    admin: {ui: [read], read: ["*"], write: ["*"]}
"""


setup = setup_fixture()
browser = browser_fixture()


def _write(setup: Rollouts, key: str, method: str, path: str, body: Any, version: int | None = None) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if method == "PATCH":
        headers["Content-Type"] = "application/merge-patch+json"
    if version is not None:
        headers["If-Match"] = f'"{version}"'
    status, _, answer = call(setup.port, method, path, json.dumps(body).encode(), headers)
    assert status in (200, 201), (status, answer)


def _ids(driver: WebDriver) -> list[str]:
    found = driver.execute_script(
        "return [...document.querySelectorAll('#view tbody tr')].map((r) => r.cells[0].innerText)"
    )
    return sorted(str(x) for x in found)


@pytest.mark.docker
def test_browse_a_collection_with_the_callers_rights_and_a_documents_versions(
    setup: Rollouts, browser: WebDriver
) -> None:
    (setup.project.root / "manifests" / "data.yaml").write_text(DATA, encoding="utf-8")
    setup.project.ok("apply")
    setup.start_gateway()
    clerk = key_for(setup, "clerk", "acme", "clerk-1")
    other_clerk = key_for(setup, "clerk", "acme", "clerk-2")
    admin = key_for(setup, "admin", "acme", "admin-acme")
    elsewhere = key_for(setup, "admin", "globex", "admin-globex")
    orders = "/v1/collections/orders/docs"
    _write(setup, clerk, "POST", f"{orders}?id=o-1", {"item": "tea", "qty": 1})
    _write(setup, clerk, "PATCH", f"{orders}/o-1", {"qty": 2}, version=1)
    _write(setup, clerk, "PUT", f"{orders}/o-1", {"item": "green tea", "qty": 3}, version=2)
    _write(setup, other_clerk, "POST", f"{orders}?id=o-2", {"item": "coffee"})
    _write(setup, elsewhere, "POST", f"{orders}?id=g-1", {"item": "mate"})
    _write(setup, clerk, "POST", "/v1/collections/notes/docs?id=n-1", {"text": "call back"})
    me = api(setup, "/v1/ui/session", clerk)[1]["principal"]

    # the change feed of one collection (the page's query): the notes' change is left out
    feed = api(setup, "/v1/changes?collection=orders&since=0", clerk)[1]["changes"]
    assert {(c["collection"], c["id"]) for c in feed} == {("orders", "o-1")}
    everything = api(setup, "/v1/changes?since=0", clerk)[1]["changes"]
    assert {(c["collection"], c["id"]) for c in everything} == {("orders", "o-1"), ("notes", "n-1")}

    sign_in(browser, setup.url, clerk)
    browser.get(f"{setup.url}/ui/#/data")
    wait_for(browser, "the collections", lambda d: "orders" in text_of(d, "#collections"))
    assert text_of(browser, "#collections").split() == ["notes", "orders"]
    links = browser.execute_script("return [...document.querySelectorAll('#triggers-views a')].map((a) => a.hash)")
    assert links == ["#/triggers", "#/views"]  # issue 15's pages (tests/dashboard/test_dashboard_plane.py)
    # the clerk's row rule: its own order only
    browser.get(f"{setup.url}/ui/#/data/orders")
    wait_for(browser, "the clerk's orders", lambda d: "o-1" in text_of(d, "#view table"))
    assert _ids(browser) == ["o-1"]
    screenshot(browser, "data-collection")
    # its versions, newest first, as the change feed has them: who, what, the data after each write
    browser.get(f"{setup.url}/ui/#/data/orders/o-1")
    wait_for(browser, "the versions", lambda d: "insert" in text_of(d, "#view table"))
    assert text_of(browser, "#current").startswith("Current version 3")
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#view tbody tr')].map((r) => [...r.cells].map((c) => c.innerText))"
    )
    assert [r[:3] for r in rows] == [
        [str(c["seq"]), str(c["after"]["version"]), c["op"]] for c in reversed(feed)
    ]  # the feed's own entries
    assert [r[1] for r in rows] == ["3", "2", "1"] and [r[2] for r in rows] == ["replace", "replace", "insert"]
    assert {r[4] for r in rows} == {me}
    assert json.loads(rows[0][6]) == {"item": "green tea", "qty": 3} and json.loads(rows[2][6])["qty"] == 1
    screenshot(browser, "data-document")
    # another clerk of the same tenant: neither the document nor its history
    sign_in(browser, setup.url, other_clerk)
    browser.get(f"{setup.url}/ui/#/data/orders/o-1")
    wait_for(browser, "the empty history", lambda d: "No changes you may read" in text_of(d, "#view"))
    assert "No such document now" in text_of(browser, "#current")
    # an admin sees the tenant's orders, not another tenant's; the other tenant's admin only its own
    sign_in(browser, setup.url, admin)
    browser.get(f"{setup.url}/ui/#/data/orders")
    wait_for(browser, "the tenant's orders", lambda d: "o-2" in text_of(d, "#view table"))
    assert _ids(browser) == ["o-1", "o-2"]
    browser.find_element(By.ID, "filter").send_keys('{"item": "coffee"}')  # the filter language of docs/data.md
    browser.find_element(By.CSS_SELECTOR, "#data-filter button[type=submit]").click()
    wait_for(browser, "the filtered orders", lambda d: "o-1" not in text_of(d, "#view table"))
    assert _ids(browser) == ["o-2"]
    sign_in(browser, setup.url, elsewhere)
    browser.get(f"{setup.url}/ui/#/data/orders")
    wait_for(browser, "globex's orders", lambda d: "g-1" in text_of(d, "#view table"))
    assert _ids(browser) == ["g-1"]
