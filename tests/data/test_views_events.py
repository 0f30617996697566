"""Views and onCommit events through a real `fnctl serve`, real containers and a real data file: a view cached,
evicted by an overlapping write and not by an unrelated one, by id after a 404, by dependsOn; per-caller views;
arguments checked against `parameters`; never a stale read under concurrent writers and readers; `fnctl view
get`; onCommit delivered in order per document, across `kill -9` of the gateway, retried to a dead letter and
replayed; a canary of a view's function (entries per revision, its failures measured)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from deploy_helpers import Project, cleanup, make_project, until
from pgserver import StateFactory
from test_data_handlers import api_keys, gateway_port, start_gateway, stop_gateway

pytestmark = pytest.mark.docker

HANDLERS = """\
import os
import time

VERSION = os.environ.get("VERSION", "one")


def summary(event, context):
    if VERSION == "canary" and event.get("customer") == "boom":
        raise RuntimeError("the canary fails this one")
    docs = context.db["orders"].find({"customer": event["customer"]})["documents"]
    return {"version": VERSION, "customer": event["customer"], "count": len(docs),
            "total": sum(d["data"]["total"] for d in docs)}


def one(event, context):
    if event.get("write"):  # for `invoke --local --data-from`: a write to the live data file
        return context.db["orders"].insert({"customer": "local", "total": 0}, id=event["write"])
    if event["id"] == "boom":
        raise RuntimeError("this view fails")
    try:
        doc = context.db["orders"].get(event["id"])
    except context.db.NotFound:
        return {"id": event["id"], "found": False}
    return {"id": doc["id"], "found": True, "version": doc["version"]}


def mine(event, context):
    docs = context.db["orders"].find({})["documents"]
    return {"caller": context.caller["subject"], "ids": sorted(d["id"] for d in docs)}


def notify(event, context):
    after = event.get("after") or {}
    if event["collection"] == "jobs" and after.get("data", {}).get("fail"):
        try:
            context.db["switches"].get("fixed")
        except context.db.NotFound:
            raise RuntimeError("not fixed yet")
    delay = after.get("data", {}).get("delay")
    if delay:
        time.sleep(delay)
    try:
        context.db["seen"].insert({"seq": event["seq"], "doc": event["id"], "op": event["op"]}, id=event["eventId"])
    except context.db.Conflict:
        context.db["dups"].insert({"eventId": event["eventId"]})
    return {"ok": True}
"""


def _function(name: str, handler: str, extra: str = "", version: str = "one", rollout: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Function
        metadata: {{name: {name}}}
        spec:
          runtime: python3.11
          source: ../functions/views
          handler: main.{handler}
          env: {{VERSION: {version}}}
          limits: {{timeout: 5s, memory: 64Mi}}
          scaling: {{minInstances: 1, maxInstances: 2, concurrency: 8}}
          access: {{roles: [reader, customer]}}
        """) + textwrap.indent(extra + rollout, "  ")


SUMMARY_PARAMETERS = (
    "parameters: {type: object, required: [customer], additionalProperties: false,\n"
    "             properties: {customer: {type: string, minLength: 1}}}\n"
)
RESOURCES = """\
apiVersion: fnctl/v1
kind: View
metadata: {name: summary-view}
spec: {function: summary, cache: {ttl: 5m}}
---
apiVersion: fnctl/v1
kind: View
metadata: {name: one-view}
spec: {function: one}
---
apiVersion: fnctl/v1
kind: View
metadata: {name: deps-view}
spec: {function: one, dependsOn: [switches]}
---
apiVersion: fnctl/v1
kind: View
metadata: {name: mine-view}
spec: {function: mine, cache: {perCaller: true}}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: orders-notify}
spec: {function: notify, on: {collection: orders, event: onCommit}}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: jobs-flaky}
spec: {function: notify, on: {collection: jobs, event: onCommit}, retry: {maxAttempts: 2, backoff: 100ms}}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: shop}
spec:
  roles:
    reader: {invoke: ["*"], read: ["*"], write: ["*"]}
    customer: {read: [{collection: orders, where: {customer: "$caller.id"}}]}
    "function:notify": {read: [switches, seen], write: [seen, dups]}
"""
COLLECTIONS = "".join(
    f"---\napiVersion: fnctl/v1\nkind: Collection\nmetadata: {{name: {name}}}\nspec: {{schema: {{type: object}}}}\n"
    for name in ("orders", "jobs", "switches", "seen", "dups")
)


@dataclass
class Live:
    project: Project
    port: int
    tokens: dict[str, str]
    subjects: dict[str, str]
    proc: subprocess.Popen[bytes]

    def request(
        self, method: str, path: str, who: str = "admin", body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"Authorization": f"Bearer {self.tokens[who]}", "Content-Type": "application/json", **(headers or {})}
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=sent)
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None, {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()

    def view(self, name: str, who: str = "admin", **params: str) -> tuple[int, Any, str]:
        status, body, headers = self.request("GET", f"/v1/views/{name}?{urlencode(params)}", who)
        return status, body, headers.get("x-fnctl-view-cache", "")

    def put(self, collection: str, id: str, document: dict[str, Any]) -> None:
        status, body, _ = self.request(
            "PUT", f"/v1/collections/{collection}/docs/{id}", body=document, headers={"If-Match": "*"}
        )
        if status == 404:
            status, body, _ = self.request("POST", f"/v1/collections/{collection}/docs?id={id}", body=document)
        assert status in (200, 201), body

    def seen(self) -> dict[str, dict[str, Any]]:
        status, body, _ = self.request("GET", "/v1/collections/seen/docs?limit=1000")
        assert status == 200, body
        return {d["id"]: d for d in body["documents"]}

    def dups(self) -> list[Any]:
        status, body, _ = self.request("GET", "/v1/collections/dups/docs?limit=1000")
        assert status == 200, body
        return list(body["documents"])


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str, project_states: StateFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("views") / "project"
    project = make_project(root, docker_client, base_image, project_states)
    proc: subprocess.Popen[bytes] | None = None
    live: Live | None = None
    try:
        port = gateway_port(project, "views", HANDLERS)
        manifests = project.root / "manifests"
        (manifests / "summary.yaml").write_text(_function("summary", "summary", SUMMARY_PARAMETERS), encoding="utf-8")
        (manifests / "one.yaml").write_text(_function("one", "one"), encoding="utf-8")
        (manifests / "mine.yaml").write_text(_function("mine", "mine"), encoding="utf-8")
        (manifests / "notify.yaml").write_text(_function("notify", "notify", "runAs: function\n"), encoding="utf-8")
        (manifests / "resources.yaml").write_text(RESOURCES + COLLECTIONS, encoding="utf-8")
        project.ok("apply")
        tokens, subjects = api_keys(project, (("admin", ("reader",)), ("alice", ("customer",)), ("bob", ("customer",))))
        live = Live(project, port, tokens, subjects, start_gateway(project, port))
        yield live
    finally:
        if live is not None:
            proc = live.proc  # the kill -9 test starts another gateway: stop the one running now
        stop_gateway(proc)
        cleanup(project)


def test_a_view_is_cached_and_evicted_by_an_overlapping_write_only(live: Live) -> None:
    live.put("orders", "a1", {"customer": "c1", "total": 5})
    status, first, cache = live.view("summary-view", customer="c1")
    assert (status, first["count"], first["total"], cache) == (200, 1, 5, "miss")
    assert live.view("summary-view", customer="c1")[1:] == (first, "hit")
    live.put("orders", "b1", {"customer": "c2", "total": 7})  # another customer's order: no overlap
    assert live.view("summary-view", customer="c1")[1:] == (first, "hit")
    live.put("orders", "a2", {"customer": "c1", "total": 4})  # overlaps the find {"customer": "c1"}
    status, second, cache = live.view("summary-view", customer="c1")
    assert (second["count"], second["total"], cache) == (2, 9, "miss")
    live.put("orders", "b1", {"customer": "c1", "total": 1})  # moves into c1: matches after
    assert live.view("summary-view", customer="c1")[1]["total"] == 10


def test_a_view_read_by_id_is_evicted_when_the_document_appears_and_by_depends_on(live: Live) -> None:
    assert live.view("one-view", id="later")[1:] == ({"id": "later", "found": False}, "miss")
    assert live.view("one-view", id="later")[2] == "hit"
    live.put("orders", "later", {"customer": "c5", "total": 1})
    assert live.view("one-view", id="later")[1:] == ({"id": "later", "found": True, "version": 1}, "miss")
    assert live.view("deps-view", id="later")[2] == "miss"
    assert live.view("deps-view", id="later")[2] == "hit"
    live.put("switches", "unrelated", {"on": True})  # deps-view depends on every change of switches
    assert live.view("deps-view", id="later")[2] == "miss"
    assert live.view("one-view", id="later")[2] == "hit"  # one-view does not


def test_per_caller_views_answer_each_caller_its_own(live: Live) -> None:
    live.put("orders", "al-1", {"customer": live.subjects["alice"], "total": 1})
    live.put("orders", "bo-1", {"customer": live.subjects["bob"], "total": 1})
    _, alice, cache = live.view("mine-view", "alice")
    assert (alice, cache) == ({"caller": live.subjects["alice"], "ids": ["al-1"]}, "miss")
    _, bob, cache = live.view("mine-view", "bob")
    assert (bob, cache) == ({"caller": live.subjects["bob"], "ids": ["bo-1"]}, "miss")
    assert live.view("mine-view", "alice")[1:] == (alice, "hit")
    live.put("orders", "bo-2", {"customer": live.subjects["bob"], "total": 2})
    assert live.view("mine-view", "bob")[1]["ids"] == ["bo-1", "bo-2"]


def test_bad_view_arguments_are_refused_with_every_violation(live: Live) -> None:
    status, body, _ = live.view("summary-view")
    assert status == 400 and body["violations"][0]["path"] == "$" and "customer" in body["violations"][0]["message"]
    status, body, _ = live.view("summary-view", customer="", extra="x")
    assert status == 400 and len(body["violations"]) == 2, body
    status, body, _ = live.view("no-such-view")
    assert status == 404, body
    status, _, _ = live.request("GET", "/v1/views/summary-view?customer=c1", headers={"Authorization": "Bearer nope"})
    assert status == 401
    result = live.project.fnctl("view", "get", "summary-view", "--key", live.tokens["admin"])
    assert result.code == 2, result.text
    assert "customer" in result.text
    result = live.project.fnctl("view", "get", "summary-view", "-p", "nonsense", "--key", live.tokens["admin"])
    assert result.code == 2 and "NAME=VALUE" in result.text


def test_fnctl_view_get_and_the_view_metrics(live: Live) -> None:
    live.put("orders", "m1", {"customer": "metrics", "total": 3})
    result = live.project.ok(
        "view", "get", "summary-view", "-p", "customer=metrics", "--key", live.tokens["admin"], "-o", "json"
    )
    assert result.json()["result"]["total"] == 3
    assert (
        live.project.ok(
            "view", "get", "summary-view", "-p", "customer=metrics", "--key", live.tokens["admin"], "-o", "json"
        ).json()["cache"]
        == "hit"
    )
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    hits = [line for line in text.splitlines() if line.startswith('fnctl_view_hits_total{view="summary-view"}')]
    assert hits and float(hits[0].split()[-1]) >= 1
    assert 'fnctl_view_invalidations_total{view="summary-view"}' in text
    assert 'fnctl_view_hit_ratio{view="summary-view"}' in text


def _metric(live: Live, name: str, view: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    found = [line for line in text.splitlines() if line.startswith(f'{name}{{view="{view}"}}')]
    return float(found[0].split()[-1]) if found else 0.0


def test_concurrent_misses_compute_once_and_errors_are_not_cached(live: Live) -> None:
    before = _metric(live, "fnctl_view_misses_total", "one-view")

    async def main() -> list[tuple[int, str]]:
        admin = {"Authorization": f"Bearer {live.tokens['admin']}"}
        async with aiohttp.ClientSession(headers=admin) as client:

            async def read() -> tuple[int, str]:
                async with client.get(f"http://127.0.0.1:{live.port}/v1/views/one-view?id=single") as response:
                    await response.read()
                    return response.status, response.headers["X-Fnctl-View-Cache"]

            return await asyncio.gather(*(read() for _ in range(12)))

    answers = asyncio.run(main())
    assert all(status == 200 for status, _ in answers)
    assert _metric(live, "fnctl_view_misses_total", "one-view") - before == 1  # one computation for all twelve
    first = live.view("one-view", id="boom")
    assert (first[0], first[2]) == (500, "miss")
    second = live.view("one-view", id="boom")
    assert (second[0], second[2]) == (500, "miss")  # not cached: computed again


def test_never_a_stale_read_under_concurrent_writers_and_readers(live: Live) -> None:
    """A write acknowledged to the writer is seen by every view read that starts after it, from any client."""
    live.put("orders", "race", {"customer": "race", "total": 0})

    async def main() -> list[tuple[int, int]]:
        acked = 0
        stale: list[tuple[int, int]] = []
        done = asyncio.Event()
        admin = {"Authorization": f"Bearer {live.tokens['admin']}"}
        base = f"http://127.0.0.1:{live.port}"
        async with aiohttp.ClientSession(headers=admin) as http_session:

            async def writer() -> None:
                nonlocal acked
                for value in range(1, 61):
                    async with http_session.put(
                        f"{base}/v1/collections/orders/docs/race",
                        json={"customer": "race", "total": value},
                        headers={"If-Match": "*"},
                    ) as response:
                        assert response.status == 200
                    acked = value
                done.set()

            async def reader() -> None:
                while not done.is_set():
                    floor = acked  # every write acknowledged before this read starts
                    async with http_session.get(f"{base}/v1/views/summary-view?customer=race") as response:
                        assert response.status == 200
                        total = (await response.json())["total"]
                    if total < floor:
                        stale.append((floor, total))

            await asyncio.gather(writer(), *(reader() for _ in range(6)))
        return stale

    assert asyncio.run(main()) == []
    assert live.view("summary-view", customer="race")[1]["total"] == 60


def test_on_commit_events_are_delivered_in_order_per_document(live: Live) -> None:
    for value in range(5):
        live.put("orders", "ordered", {"customer": "c7", "total": value})
    seen = until(
        lambda: (s := {k: v for k, v in live.seen().items() if v["data"]["doc"] == "ordered"}) and len(s) == 5 and s,
        "the five events of one document to be delivered",
    )
    by_delivery = sorted(seen.values(), key=lambda d: d["createdAt"])
    assert [d["data"]["seq"] for d in by_delivery] == sorted(d["data"]["seq"] for d in by_delivery)
    assert [d["data"]["op"] for d in by_delivery] == ["insert"] + ["replace"] * 4
    assert all(key == f"orders-notify:{d['data']['seq']}" for key, d in seen.items())
    assert live.dups() == []


def test_retries_end_in_a_dead_letter_that_replay_delivers(live: Live) -> None:
    live.put("jobs", "j1", {"fail": True})
    dead = until(
        lambda: live.project.ok("events", "ls", "--status", "dead", "--trigger", "jobs-flaky", "-o", "json").json(),
        "the failing event to become a dead letter",
    )
    assert [(e["id"], e["attempts"]) for e in dead] == [("j1", 2)]
    assert "not fixed yet" in dead[0]["lastError"]
    live.put("switches", "fixed", {"on": True})
    assert "1 event(s) pending again" in live.project.ok("events", "replay", "--trigger", "jobs-flaky").out
    event_id = dead[0]["eventId"]
    until(lambda: event_id in live.seen(), "the replayed event to be delivered")
    assert live.project.ok("events", "ls", "--status", "dead", "-o", "json").json() == []
    result = live.project.fnctl("events", "ls", "--status", "bogus")
    assert result.code == 2 and "pending, delivered" in result.text
    assert "events-replay" in live.project.ok("audit").out


def test_invoke_local_on_the_live_data_file_queues_on_commit_events(live: Live) -> None:
    live.project.ok(
        "invoke", "--local", "one", "--data-from", live.project.location.to_arg(), "-d", '{"write": "loc-1"}'
    )
    until(lambda: "loc-1" in {d["data"]["doc"] for d in live.seen().values()}, "the local write's event delivered")


def test_on_commit_survives_kill_9_of_the_gateway(live: Live) -> None:
    # Slow handlers: some events are in delivery when the gateway dies.
    for i in range(6):
        live.put("orders", f"k{i}", {"customer": "kill", "total": i, "delay": 0.3})
    live.proc.send_signal(signal.SIGKILL)
    live.proc.wait(timeout=30)
    # Written while no gateway runs: the CLI's writes queue events too.
    live.project.ok("data", "put", "orders", "k-offline", "-d", json.dumps({"customer": "kill", "total": 9}))
    live.proc = start_gateway(live.project, live.port)
    wanted = {f"k{i}" for i in range(6)} | {"k-offline"}
    until(
        lambda: wanted <= {d["data"]["doc"] for d in live.seen().values()},
        "every event written before and during the kill to be delivered",
        timeout=60,
    )
    pending = live.project.ok("events", "ls", "--status", "pending", "--trigger", "orders-notify", "-o", "json").json()
    assert [e for e in pending if e["id"] in wanted] == []


def test_a_canary_of_a_views_function_has_entries_of_its_own(live: Live) -> None:
    live.put("orders", "can-1", {"customer": "can", "total": 2})
    assert live.view("summary-view", customer="can")[1:] == (
        {"version": "one", "customer": "can", "count": 1, "total": 2},
        "miss",
    )
    canary = "rollout: {strategy: canary, steps: [{setWeight: 50}, {pause: {}}]}\n"
    (live.project.root / "manifests" / "summary.yaml").write_text(
        _function("summary", "summary", SUMMARY_PARAMETERS, version="canary", rollout=canary), encoding="utf-8"
    )
    result = live.project.fnctl("apply")
    assert result.code == 4, result.text  # paused at the gate, 50% on the canary
    seen: dict[str, set[str]] = {"1": {"miss"}, "2": set()}  # revision 1 computed its entry above

    def both_served() -> bool:
        status, body, headers = live.request("GET", "/v1/views/summary-view?customer=can")
        assert status == 200, body
        revision = headers["x-fnctl-revision"]
        assert body["version"] == {"1": "one", "2": "canary"}[revision]  # never the other revision's entry
        seen[revision].add(headers["x-fnctl-view-cache"])
        return all(s == {"hit", "miss"} for s in seen.values())

    until(both_served, "both revisions to compute and serve their own entries")
    # The canary's view failures are measured like its invocations' (what rollout analysis reads).
    until(
        lambda: live.request("GET", "/v1/views/summary-view?customer=boom")[2]["x-fnctl-revision"] == "2",
        "a view read of customer boom routed to the canary",
    )
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    assert 'fnctl_requests_total{code="500",function="summary",revision="2"}' in text


def test_the_gateway_log_has_no_traceback(live: Live) -> None:
    log = (live.project.root.parent / "serve.err").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert os.path.exists(live.project.root.parent / "serve.err")
