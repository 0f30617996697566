"""Data hooks and manual triggers through a real `fnctl serve`, real containers and a real data file: a
validation hook that aborts small deals and marks large ones, hooks chained in order, an after-hook cascade
rolled back by a later hook's error, recursion stopped at the depth limit and on the same document twice,
auto-disable after 3 faults and `fnctl enable`, manual runs (CLI and REST, with and without the grant), every
bad answer of a hook, and `fnctl data` refusing to write past hooks unless --no-hooks."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from deploy_helpers import cleanup, make_project, until
from pgserver import StateFactory
from test_data_handlers import Live, api_keys, gateway_port, start_gateway, stop_gateway

from fnctl.state.auditlog import AuditFilter, audit_records, invocation_records

pytestmark = pytest.mark.docker

HANDLER = """\
import os
import time

def _count_run(key):
    # The runs are counted in the instance's /tmp, not in a module global: a synchronous handler's
    # invocations are served by several worker processes of the instance (docs/runtime.md).
    path = os.path.join("/tmp", "runs-" + key)
    runs = (int(open(path).read()) if os.path.exists(path) else 0) + 1
    with open(path, "w") as counter:
        counter.write(str(runs))
    return runs


def handler(event, context):
    db = context.db
    trigger = event.get("trigger")
    if event.get("op") == "insert":  # a function writing through context.db: the same hooks run
        try:
            return {"doc": db[event["c"]].insert(event["doc"], id=event.get("id"))}
        except context.db.DataError as error:
            return {"error": type(error).__name__, "status": error.status, "message": str(error)}
    if trigger is None:  # a manual run, or the health check
        return {"manual": event, "caller": (context.caller or {}).get("subject")}
    proposed = event.get("proposed") or {}
    if trigger == "deals-validate":
        amount = proposed.get("amount", 0)
        if amount < 100:
            raise context.Abort(f"deal {event['id']} is under 100 ({amount})")
        if amount > 100000:
            return {**proposed, "status": "needs_approval"}
        return None
    if trigger == "deals-stamp":  # order 2: sees what deals-validate changed
        return {**proposed, "seen": proposed.get("status", "ok"), "by": event["caller"]["id"], "depth": event["depth"]}
    if trigger == "deals-ledger":  # after-hook: a cascade write, in the writer's transaction
        db["ledger"].insert({"deal": event["id"], "amount": event["after"]["data"]["amount"]}, id="l-" + event["id"])
        return None
    if trigger == "deals-guard":  # after-hook, after the ledger: its error rolls everything back
        if event["after"]["data"].get("fail"):
            raise RuntimeError("the guard refused this deal")
        return None
    if trigger == "chain-next":  # every chain document creates the next one: recursion
        n = int(event["id"][1:])
        db["chain"].insert({"n": n + 1}, id=f"c{n + 1}")
        return None
    if trigger == "ping-self":  # updates the document it was called for: the same hook on it again
        db["pings"].update(event["id"], {"count": event["after"]["data"]["count"] + 1})
        return None
    if trigger == "slow-update":  # the first run on a document waits, so that a write can overtake it
        runs = _count_run(event["id"])
        if runs == 1:  # long enough for the test's `fnctl data patch` to start and commit, even on a busy machine
            time.sleep(12)
        return {**proposed, "runs": runs}
    if trigger == "sleepy-hook":
        time.sleep(4)
        return None
    if trigger in ("flaky-hook", "lenient-hook"):
        raise RuntimeError("flaky is broken")
    if trigger == "bad-hook":
        mode = proposed.get("mode")
        if mode == "list":
            return [1, 2]
        if mode == "id":
            return {**proposed, "id": "someone-else"}
        if mode == "schema":
            return {**proposed, "n": "not a number"}
        if mode == "abort-int":
            raise context.Abort(42)
        return None
    raise ValueError(f"unknown trigger {trigger!r}")
"""

FUNCTION = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: hooks}
spec:
  runtime: python3.11
  source: ../functions/hooks
  handler: main.handler
  limits: {timeout: 30s, memory: 64Mi}
  scaling: {minInstances: 1, maxInstances: 2, concurrency: 8}
  access: {roles: [clerk]}
  healthCheck:
    - event: {probe: true}
  rollout:
    strategy: canary
    steps: [{setWeight: 50}, {pause: {}}, {setWeight: 100}]
"""


def _trigger(name: str, collection: str, event: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Trigger
        metadata: {{name: {name}}}
        spec:
          function: hooks
          on: {{collection: {collection}, event: {event}}}
        """) + textwrap.indent(extra, "  ")


def _collection(name: str, schema: str = "{type: object}") -> str:
    return f"apiVersion: fnctl/v1\nkind: Collection\nmetadata: {{name: {name}}}\nspec:\n  schema: {schema}\n"


DEALS = "{type: object, required: [amount], properties: {amount: {type: number}, status: {type: string}}}"
PROCEDURE = FUNCTION.replace("name: hooks}", "name: proc}").replace("clerk]}", "clerk]}\n  transaction: {retries: 2}")
MANIFESTS = [
    FUNCTION,
    PROCEDURE,
    _collection("deals", DEALS),
    *(_collection(c) for c in ("ledger", "chain", "pings", "flaky", "races", "lenient", "sleepy")),
    _collection("bad", "{type: object, properties: {n: {type: integer}}}"),
    # listed out of order on purpose: `order` decides, then the name
    _trigger("deals-stamp", "deals", "beforeCreate", "order: 2\n"),
    _trigger("deals-validate", "deals", "beforeCreate", "order: 1\n"),
    _trigger("deals-guard", "deals", "afterCreate", "order: 2\n"),
    _trigger("deals-ledger", "deals", "afterCreate", "order: 1\n"),
    _trigger("chain-next", "chain", "afterCreate"),
    _trigger("ping-self", "pings", "afterUpdate"),
    _trigger("flaky-hook", "flaky", "beforeCreate"),
    _trigger("lenient-hook", "lenient", "beforeCreate", "failurePolicy: ignore\ndisableAfter: 2\nwhenDisabled: skip\n"),
    _trigger("sleepy-hook", "sleepy", "beforeCreate", "timeout: 1s\n"),
    _trigger("slow-update", "races", "beforeUpdate", "timeout: 30s\n"),
    _trigger("bad-hook", "bad", "beforeCreate", "disableAfter: 100\n"),
    textwrap.dedent("""\
        apiVersion: fnctl/v1
        kind: Trigger
        metadata: {name: deal-report}
        spec:
          function: hooks
          manual: {event: {report: default}}
        """),
    textwrap.dedent("""\
        apiVersion: fnctl/v1
        kind: Policy
        metadata: {name: shop}
        spec:
          roles:
            clerk: {invoke: [hooks, proc], read: ["*"], write: ["*"]}
            reporter: {run: [deal-report]}
        """),
]


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str, project_states: StateFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("hooks") / "project"
    project = make_project(root, docker_client, base_image, project_states)
    proc = None
    try:
        port = gateway_port(project, "hooks", HANDLER)
        (project.root / "manifests" / "hooks.yaml").write_text("---\n".join(MANIFESTS), encoding="utf-8")
        project.ok("apply")
        tokens, subjects = api_keys(project, (("alice", ("clerk",)), ("reporter", ("clerk", "reporter"))))
        proc = start_gateway(project, port)
        yield Live(project, port, tokens, subjects)
    finally:
        stop_gateway(proc)
        cleanup(project)


def _post(live: Live, collection: str, doc: Any, id_: str | None = None, who: str = "alice") -> tuple[int, Any]:
    query = f"?id={id_}" if id_ else ""
    return live.rest("POST", f"/v1/collections/{collection}/docs{query}", who, doc)


def _audited(live: Live) -> list[tuple[str, str]]:
    with live.project.store() as store:
        return [(r.action, r.target) for r in audit_records(store, AuditFilter(), limit=10000)]


def _exists(live: Live, collection: str, id_: str) -> bool:
    status, _ = live.rest("GET", f"/v1/collections/{collection}/docs/{id_}", "alice")
    assert status in (200, 404)
    return status == 200


def test_a_validation_hook_aborts_small_deals_and_marks_large_ones_in_order(live: Live) -> None:
    status, body = _post(live, "deals", {"amount": 50}, "d-small")
    assert status == 422, body
    assert body["type"].endswith("/aborted") and body["detail"] == "deals-validate: deal d-small is under 100 (50)"
    assert not _exists(live, "deals", "d-small") and not _exists(live, "ledger", "l-d-small")

    status, body = _post(live, "deals", {"amount": 500}, "d-ok")
    assert status == 201, body
    # deals-stamp ran second (order: 2), with the writer's identity, at depth 0
    assert body["data"] == {"amount": 500, "seen": "ok", "by": live.subjects["alice"], "depth": 0}
    assert body["createdBy"] == live.subjects["alice"]
    status, ledger = live.rest("GET", "/v1/collections/ledger/docs/l-d-ok", "alice")
    assert status == 200 and ledger["data"] == {"deal": "d-ok", "amount": 500}, ledger

    status, body = _post(live, "deals", {"amount": 250000}, "d-big")
    assert status == 201, body
    assert body["data"]["status"] == "needs_approval" and body["data"]["seen"] == "needs_approval", body

    # each hook run is an invocation of its function's routed revision: audited under the trigger's name as the
    # writer, measured like any request (so a canary's hook failures count in its analysis)
    def hook_runs() -> list[tuple[str | None, str, int | None, int, str | None]]:
        with live.project.store() as store:
            return [
                (r.trigger, r.function, r.revision, r.status, r.principal)
                for r in invocation_records(store, AuditFilter(), limit=10000)
                if r.trigger in ("deals-validate", "deals-stamp")
            ]

    until(lambda: len(hook_runs()) >= 5, "the hook runs in the invocation audit")
    assert ("deals-validate", "hooks", 1, 422, live.subjects["alice"]) in hook_runs()
    assert ("deals-stamp", "hooks", 1, 200, live.subjects["alice"]) in hook_runs()


def test_an_after_hook_cascade_is_rolled_back_by_a_later_hooks_error(live: Live) -> None:
    status, body = _post(live, "deals", {"amount": 700, "fail": True}, "d-fail")
    assert status == 502, body
    assert "deals-guard" in body["detail"] and "the guard refused this deal" in body["detail"], body
    # the deal and the ledger row deals-ledger wrote before the guard failed: neither committed
    assert not _exists(live, "deals", "d-fail") and not _exists(live, "ledger", "l-d-fail")


def test_batches_and_context_db_run_the_same_hooks(live: Live) -> None:
    ops = [
        {"op": "insert", "collection": "deals", "id": "b-1", "document": {"amount": 300}},
        {"op": "insert", "collection": "deals", "id": "b-2", "document": {"amount": 5}},
    ]
    status, body = live.rest("POST", "/v1/batch", "alice", {"operations": ops})
    assert status == 422 and "b-2 is under 100" in body["detail"], body
    assert not _exists(live, "deals", "b-1") and not _exists(live, "ledger", "l-b-1")  # all or nothing
    status, body = live.rest("POST", "/v1/batch", "alice", {"operations": ops[:1]})
    assert status == 200 and body["results"][0]["data"]["seen"] == "ok", body
    assert _exists(live, "ledger", "l-b-1")

    status, body = live.invoke("hooks", {"op": "insert", "c": "deals", "id": "f-1", "doc": {"amount": 1}}, "alice")
    assert status == 200 and body["status"] == 422 and "under 100" in body["message"], body
    status, body = live.invoke("hooks", {"op": "insert", "c": "deals", "id": "f-2", "doc": {"amount": 200}}, "alice")
    assert status == 200 and body["doc"]["data"]["seen"] == "ok", body
    assert _exists(live, "ledger", "l-f-2") and not _exists(live, "deals", "f-1")
    # a procedure: the hooks' writes join its transaction, committed when it returns
    status, body = live.invoke("proc", {"op": "insert", "c": "deals", "id": "p-1", "doc": {"amount": 300}}, "alice")
    assert status == 200 and body["doc"]["data"]["seen"] == "ok", body
    assert _exists(live, "deals", "p-1") and _exists(live, "ledger", "l-p-1")
    status, body = live.invoke("proc", {"op": "insert", "c": "deals", "id": "p-2", "doc": {"amount": 2}}, "alice")
    assert status == 200 and body["status"] == 422, body
    status, body = live.invoke(
        "proc", {"op": "insert", "c": "deals", "id": "p-3", "doc": {"amount": 300, "fail": True}}, "alice"
    )
    assert status == 200 and body["status"] == 502 and "deals-guard" in body["message"], body
    assert not _exists(live, "deals", "p-3") and not _exists(live, "ledger", "l-p-3")


def test_recursion_stops_at_the_depth_limit_and_on_the_same_document_twice(live: Live) -> None:
    status, body = _post(live, "chain", {"n": 0}, "c0")
    assert status == 508, body
    assert "depth limit of 3" in body["detail"], body
    assert not any(_exists(live, "chain", f"c{n}") for n in range(5))  # nothing of the chain committed

    status, made = _post(live, "pings", {"count": 0}, "p1")  # pings has no create hook
    assert status == 201, made
    status, body = live.rest(
        "PATCH",
        "/v1/collections/pings/docs/p1",
        "alice",
        {"count": 1},
        {"If-Match": '"1"', "Content-Type": "application/merge-patch+json"},
    )
    assert status == 508 and "ping-self would run twice on pings/p1" in body["detail"], body
    status, doc = live.rest("GET", "/v1/collections/pings/docs/p1", "alice")
    assert doc["version"] == 1 and doc["data"] == {"count": 0}


def test_every_bad_answer_of_a_hook_is_refused_and_writes_nothing(live: Live) -> None:
    cases = {
        "list": "hook bad-hook returned list: a hook returns nothing (accept) or the changed document",
        "id": "hook bad-hook changed the document's id ('x-id' to 'someone-else')",
        "schema": "the document hook bad-hook returned breaks 'bad'",
        "abort-int": "context.Abort(reason): the reason must be a string, not int",
    }
    for mode, expected in cases.items():
        id_ = f"x-{mode}"
        status, body = _post(live, "bad", {"mode": mode}, id_)
        assert status == 502, (mode, body)
        assert expected.replace("x-id", id_) in body["detail"], (mode, body)
        assert not _exists(live, "bad", id_)
    status, body = _post(live, "bad", {"mode": "schema"}, "x-schema")
    assert body["violations"][0]["path"] == "$.n", body
    # a document that is invalid before any hook: the client's 400, with its violations; no hook sees it
    status, body = _post(live, "deals", {"amount": "lots"}, "d-invalid")
    assert status == 400 and body["violations"][0]["path"] == "$.amount", body
    assert _post(live, "bad", {"mode": "fine"}, "x-fine")[0] == 201


def test_a_trigger_disables_itself_after_3_faults_until_enabled(live: Live) -> None:
    for attempt in range(3):
        status, body = _post(live, "flaky", {"try": attempt})
        assert status == 502 and "hook flaky-hook failed: RuntimeError: flaky is broken" in body["detail"], body
    status, body = _post(live, "flaky", {"try": 3})
    assert status == 503 and body["type"].endswith("/trigger-disabled"), body
    assert "fnctl enable flaky-hook" in body["detail"]

    listed = {t["name"]: t for t in json.loads(live.project.ok("triggers", "-o", "json").out)}
    assert listed["flaky-hook"]["disabled"] and listed["flaky-hook"]["faults"] == 3
    assert "flaky is broken" in listed["flaky-hook"]["lastError"]
    assert (
        not listed["deals-validate"]["disabled"]
        and listed["deals-validate"]["target"] == "deals beforeCreate (order 1)"
    )
    assert "trigger flaky-hook is DISABLED" in live.project.ok("status").err
    assert ("trigger-disable", "flaky-hook") in _audited(live)

    live.project.ok("enable", "flaky-hook")
    assert ("trigger-enable", "flaky-hook") in _audited(live)
    # within the gateway's refresh of the triggers' health, the hook runs again (and faults again)
    until(lambda: _post(live, "flaky", {"try": "again"})[0] == 502, "flaky-hook to run again after enable")
    listed = {t["name"]: t for t in json.loads(live.project.ok("triggers", "-o", "json").out)}
    assert not listed["flaky-hook"]["disabled"]


def test_manual_runs_through_the_cli_and_rest_need_the_run_grant(live: Live) -> None:
    status, body = live.rest("POST", "/v1/triggers/deal-report/run", "reporter", {"since": "2026"})
    assert status == 200 and body == {"manual": {"since": "2026"}, "caller": live.subjects["reporter"]}, body
    status, body = live.rest("POST", "/v1/triggers/deal-report/run", "alice", {"since": "2026"})
    assert status == 403 and "run" in body["error"], body
    status, body = live.rest("POST", "/v1/triggers/no-such/run", "reporter")
    assert status == 403, body  # whether it exists is not told to those who may not run it

    ran = live.project.ok("run", "deal-report", "--key", live.tokens["reporter"], "-o", "json")
    assert json.loads(ran.out)["result"] == {"manual": {"report": "default"}, "caller": live.subjects["reporter"]}
    ran = live.project.ok("run", "deal-report", "-d", '{"x": 1}', "--key", live.tokens["reporter"], "-o", "json")
    assert json.loads(ran.out)["result"]["manual"] == {"x": 1}
    refused = live.project.fnctl("run", "deal-report", "--key", live.tokens["alice"])
    assert refused.code == 1 and "403" in refused.text, refused.text
    wrong = live.project.fnctl("run", "deals-validate", "--key", live.tokens["reporter"])
    assert wrong.code == 2 and "not a manual trigger" in wrong.text, wrong.text

    def runs() -> list[int]:
        return live.trigger_runs("deal-report")

    until(lambda: runs().count(200) >= 3 and 403 in runs(), "the manual runs in the invocation audit")


def test_fnctl_data_runs_no_hooks_unless_told_to_write_past_them(live: Live) -> None:
    refused = live.project.fnctl("data", "put", "deals", "cli-1", "-d", '{"amount": 1}')
    assert refused.code == 2, refused.text
    assert "deals-guard, deals-ledger, deals-stamp, deals-validate" in refused.text and "--no-hooks" in refused.text
    assert not _exists(live, "deals", "cli-1")
    live.project.ok("data", "put", "deals", "cli-1", "-d", '{"amount": 1}', "--no-hooks")
    assert _exists(live, "deals", "cli-1") and not _exists(live, "ledger", "l-cli-1")
    assert ("data-no-hooks", "deals") in _audited(live)
    live.project.ok("data", "put", "ledger", "cli-2", "-d", '{"amount": 1}')  # no hooks there: as before

    # `invoke --local --data-from` a live store runs no hooks either: its writes to hooked collections are refused
    event = json.dumps({"op": "insert", "c": "deals", "id": "loc-1", "doc": {"amount": 500}})
    local = live.project.ok(
        "invoke", "--local", "hooks", "--data-from", live.project.location.to_arg(), "-d", event, "-o", "json"
    )
    result = json.loads(local.out)["result"]
    assert result["status"] == 400 and "has data hooks" in result["message"], result
    assert not _exists(live, "deals", "loc-1")


def test_a_conflict_at_the_commit_runs_the_hooks_again(live: Live) -> None:
    """The hook runs outside any lock: a write that commits meanwhile makes this one's commit conflict, and the
    gateway runs its hooks again on what is there now (no egress), rather than answering 409."""
    assert _post(live, "races", {"v": 0}, "r1")[0] == 201
    status, body = live.patch_racing_the_operator("hooks", "the slow hook to be running")
    assert status == 200, body
    # the second run saw the operator's write and its document is the one committed, on top of it (`runs` is
    # counted in the instance's /tmp, which all its worker processes share); the invocation audit agrees
    assert body["data"] == {"v": 1, "by": "operator", "runs": 2} and body["version"] == 3, body

    until(lambda: len(live.trigger_runs("slow-update")) >= 2, "both runs of slow-update in the invocation audit")
    assert live.trigger_runs("slow-update") == [200, 200]


def test_failure_policy_ignore_when_disabled_skip_and_a_timeout(live: Live) -> None:
    # failurePolicy: ignore: the write goes on, the fault still counts; disabled, whenDisabled: skip goes on too
    for n in range(3):
        status, body = _post(live, "lenient", {"n": n}, f"len-{n}")
        assert status == 201 and body["data"] == {"n": n}, body
    listed = {t["name"]: t for t in json.loads(live.project.ok("triggers", "-o", "json").out)}
    assert listed["lenient-hook"]["disabled"] and listed["lenient-hook"]["faults"] == 2

    status, body = _post(live, "sleepy", {"n": 1}, "zz-1")  # the hook sleeps past its 1 s timeout
    assert status == 502 and body["detail"] == "hook sleepy-hook timed out", body
    assert not _exists(live, "sleepy", "zz-1")


def test_hooks_run_on_the_revisions_the_routing_weights_pick(live: Live) -> None:
    """A canary of the hooks' function at 50 %: hook runs go to both revisions, as invocations would, and are
    counted in each revision's metrics (what the canary's analysis reads). Last: it changes the deployment."""
    code = live.project.root / "functions" / "hooks" / "main.py"
    code.write_text(code.read_text(encoding="utf-8") + "\n# revision 2\n", encoding="utf-8")
    waiting = live.project.fnctl("apply")
    assert waiting.code == 4, waiting.text  # at the canary's gate: 50 % on each revision

    def revisions() -> set[int | None]:
        with live.project.store() as store:
            return {
                r.revision for r in invocation_records(store, AuditFilter(), limit=10000) if r.trigger == "deals-stamp"
            }

    until(
        lambda: _post(live, "deals", {"amount": 150})[0] == 201 and revisions() >= {1, 2}, "hook runs on both revisions"
    )
    metrics = live.metrics()
    assert 'fnctl_requests_total{code="200",function="hooks",revision="2"}' in metrics, [
        line for line in metrics.splitlines() if line.startswith("fnctl_requests_total")
    ]
    # the earlier tests' failed hook runs (500s, timeouts) are errors of revision 1, as failed invocations are
    errors = [
        line for line in metrics.splitlines() if line.startswith('fnctl_errors_total{function="hooks",revision="1"}')
    ]
    assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 5, errors
