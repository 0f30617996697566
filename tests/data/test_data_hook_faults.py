"""The data hooks' fault paths end to end, through a real `fnctl serve`, real containers and a real data file:
an onCommit trigger disabled after 3 failed deliveries (audited, shown by `fnctl triggers` and `fnctl status`)
whose events wait, untouched, until `fnctl enable`, then are delivered in order per document, each once; a
hooked write whose hook function has `network: egress` answered 409 on a conflict at the commit, its hook not
run again; the per-transaction limit on hook runs."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from deploy_helpers import cleanup, make_project, until
from pgserver import StateFactory
from test_data_handlers import Live, api_keys, gateway_port, start_gateway, stop_gateway

from fnctl.data.hooks import MAX_RUNS
from fnctl.state.auditlog import AuditFilter, audit_records

pytestmark = pytest.mark.docker

HANDLER = """\
import time

RUNS = {}


def handler(event, context):
    trigger = event.get("trigger")
    if trigger is None:  # the health check
        return {"probe": True}
    if trigger in ("alarms-notify", "marks-notify"):  # onCommit deliveries
        if trigger == "alarms-notify":
            try:
                context.db["switches"].get("fixed")
            except context.db.NotFound:
                raise RuntimeError("not fixed yet")
        after = (event.get("after") or {}).get("data") or {}
        try:
            context.db["seen"].insert(
                {"trigger": trigger, "doc": event["id"], "seq": event["seq"], "n": after.get("n")}, id=event["eventId"]
            )
        except context.db.Conflict:
            context.db["dups"].insert({"eventId": event["eventId"]})
        return None
    if trigger == "slow-egress":  # the first run on a document waits, so that a write can overtake it
        RUNS[event["id"]] = RUNS.get(event["id"], 0) + 1
        if RUNS[event["id"]] == 1:
            time.sleep(3)
        return None
    if trigger == "counted":
        return None
    raise ValueError(f"unknown trigger {trigger!r}")
"""


def _function(name: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Function
        metadata: {{name: {name}}}
        spec:
          runtime: python3.11
          source: ../functions/faults
          handler: main.handler
          limits: {{timeout: 5s, memory: 64Mi}}
          scaling: {{minInstances: 1, maxInstances: 1, concurrency: 8}}
          access: {{roles: [clerk]}}
          runAs: function
        """) + textwrap.indent(extra, "  ")


def _trigger(name: str, function: str, collection: str, event: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Trigger
        metadata: {{name: {name}}}
        spec:
          function: {function}
          on: {{collection: {collection}, event: {event}}}
        """) + textwrap.indent(extra, "  ")


MANIFESTS = [
    _function("faults"),
    _function("outside", "network: egress\n"),
    *(
        f"apiVersion: fnctl/v1\nkind: Collection\nmetadata: {{name: {c}}}\nspec: {{schema: {{type: object}}}}\n"
        for c in ("alarms", "marks", "switches", "seen", "dups", "races", "many")
    ),
    _trigger("alarms-notify", "faults", "alarms", "onCommit", "retry: {maxAttempts: 20, backoff: 100ms}\n"),
    _trigger("marks-notify", "faults", "marks", "onCommit"),
    _trigger("slow-egress", "outside", "races", "beforeUpdate", "timeout: 10s\n"),
    _trigger("counted", "faults", "many", "beforeCreate", "disableAfter: 100\n"),
    textwrap.dedent("""\
        apiVersion: fnctl/v1
        kind: Policy
        metadata: {name: shop}
        spec:
          roles:
            clerk: {invoke: [faults, outside], read: ["*"], write: ["*"]}
            "function:faults": {read: [switches, seen], write: [seen, dups]}
        """),
]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str, project_states: StateFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("faults") / "project"
    project = make_project(root, docker_client, base_image, project_states)
    proc = None
    try:
        port = gateway_port(project, "faults", HANDLER)
        (project.root / "manifests" / "faults.yaml").write_text("---\n".join(MANIFESTS), encoding="utf-8")
        project.ok("apply")
        tokens, subjects = api_keys(project, [("alice", ("clerk",))])
        proc = start_gateway(project, port)
        yield Live(project, port, tokens, subjects)
    finally:
        stop_gateway(proc)
        cleanup(project)


def _put(live: Live, collection: str, id_: str, doc: Any) -> None:
    status, body = live.rest("PUT", f"/v1/collections/{collection}/docs/{id_}", "alice", doc, {"If-Match": "*"})
    if status == 404:
        status, body = live.rest("POST", f"/v1/collections/{collection}/docs?id={id_}", "alice", doc)
    assert status in (200, 201), body


def _docs(live: Live, collection: str) -> list[dict[str, Any]]:
    status, body = live.rest("GET", f"/v1/collections/{collection}/docs?limit=1000", "alice")
    assert status == 200, body
    return list(body["documents"])


def _events(live: Live, *args: str) -> list[dict[str, Any]]:
    return list(live.project.ok("events", "ls", "--trigger", "alarms-notify", *args, "-o", "json").json())


def _triggers(live: Live) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in json.loads(live.project.ok("triggers", "-o", "json").out)}


def test_an_on_commit_trigger_disabled_after_3_faults_holds_its_events_until_enabled(live: Live) -> None:
    for n in range(3):  # three events of one document (in order), one of another
        _put(live, "alarms", "a1", {"n": n})
    _put(live, "alarms", "a2", {"n": 10})
    until(lambda: _triggers(live)["alarms-notify"]["disabled"], "alarms-notify to disable itself after 3 faults")
    listed = _triggers(live)["alarms-notify"]
    assert listed["faults"] >= 3 and "not fixed yet" in listed["lastError"], listed
    assert "trigger alarms-notify is DISABLED" in live.project.ok("status").err
    with live.project.store() as store:
        audited = [(r.action, r.target) for r in audit_records(store, AuditFilter(), limit=10000)]
    assert audited.count(("trigger-disable", "alarms-notify")) == 1, audited

    # The handler would succeed now; the events still wait. Proof: once every event's next attempt is due, an
    # event of another trigger written after that is delivered (the dispatcher ran a round), theirs are not.
    _put(live, "switches", "fixed", {"on": True})
    # (the round that disabled it settles its attempts just after: two listings alike)
    held = until(
        lambda: (h := _events(live, "--status", "pending")) == _events(live, "--status", "pending") and h,
        "the round to settle",
    )
    tried = sorted((e["id"], e["attempts"] > 0) for e in held)
    assert tried == [("a1", False), ("a1", False), ("a1", True), ("a2", True)], held
    until(lambda: time.time() > max(e["nextAttempt"] for e in held) + 0.5, "every held event's next attempt due")
    _put(live, "marks", "m1", {"n": 1})
    until(lambda: any(d["data"]["doc"] == "m1" for d in _docs(live, "seen")), "the event of marks/m1 delivered")
    assert _events(live, "--status", "pending") == held  # attempts untouched, nothing dead, nothing delivered
    assert _events(live, "--status", "dead") == [] and _events(live, "--status", "delivered") == []
    assert not [d for d in _docs(live, "seen") if d["data"]["trigger"] == "alarms-notify"]

    live.project.ok("enable", "alarms-notify")
    delivered = until(
        lambda: (
            (s := [d for d in _docs(live, "seen") if d["data"]["trigger"] == "alarms-notify"]) and len(s) >= 4 and s
        ),
        "the held events to be delivered after enable",
    )
    a1 = sorted((d for d in delivered if d["data"]["doc"] == "a1"), key=lambda d: d["createdAt"])
    assert [d["data"]["n"] for d in a1] == [0, 1, 2]  # in order per document
    assert sorted(d["data"]["doc"] for d in delivered) == ["a1", "a1", "a1", "a2"]
    assert _docs(live, "dups") == []  # each once
    assert _events(live, "--status", "pending") == [] and len(_events(live, "--status", "delivered")) == 4
    assert not _triggers(live)["alarms-notify"]["disabled"]


def test_a_conflict_at_the_commit_of_a_write_hooked_by_an_egress_function_is_a_409(live: Live) -> None:
    """The hook's function may have acted outside (`network: egress`): its write is not run again on a conflict."""
    _put(live, "races", "r1", {"v": 0})
    status, body = live.patch_racing_the_operator("outside", "the slow egress hook to be running")
    assert status == 409 and body["type"].endswith("/conflict"), body
    status, doc = live.rest("GET", "/v1/collections/races/docs/r1", "alice")
    assert doc["data"] == {"v": 0, "by": "operator"} and doc["version"] == 2, doc  # the client's write: nothing

    # The hook ran once for the refused write: a later write's run is the second in the audit, not the third.
    headers = {"If-Match": "*", "Content-Type": "application/merge-patch+json"}
    assert live.rest("PATCH", "/v1/collections/races/docs/r1", "alice", {"v": 2}, headers)[0] == 200
    until(lambda: len(live.trigger_runs("slow-egress")) >= 2, "both hook runs in the invocation audit")
    assert live.trigger_runs("slow-egress") == [200, 200]


def test_a_transaction_runs_at_most_50_hooks(live: Live) -> None:
    def batch(prefix: str, n: int) -> tuple[int, Any]:
        ops = [{"op": "insert", "collection": "many", "id": f"{prefix}{i}", "document": {"i": i}} for i in range(n)]
        return live.rest("POST", "/v1/batch", "alice", {"operations": ops})

    status, body = batch("over-", MAX_RUNS + 1)
    assert status == 508 and body["type"].endswith("/hook-loop"), body
    assert f"more than {MAX_RUNS} hook runs in one transaction" in body["detail"], body
    assert not [d for d in _docs(live, "many") if d["id"].startswith("over-")]  # all or nothing
    status, body = batch("fits-", MAX_RUNS)
    assert status == 200 and len(body["results"]) == MAX_RUNS, body
    assert len([d for d in _docs(live, "many") if d["id"].startswith("fits-")]) == MAX_RUNS
