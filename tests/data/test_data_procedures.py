"""Data-plane functions deployed from real manifests (Collections, a Policy, Functions) with `apply`, served by
a real `fnctl serve`, in real containers: a `runAs: function` Function granted its role `function:NAME` in the
manifests' Policy; a procedure whose read went stale is re-run (its runs counted in the instance), and one with
`network: egress` is answered 409, run once, with nothing written."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from deploy_helpers import cleanup, make_project, until
from pgserver import StateFactory
from test_data_handlers import Live, api_keys, gateway_port, start_gateway, stop_gateway

from fnctl.state import docstore
from fnctl.state.docrecords import ChangeRow

pytestmark = pytest.mark.docker

# RUNS counts the runs of each key in this instance (maxInstances 1: a re-run comes back here). The first run
# of a key reads the `gate` document, then re-reads it until a concurrent write changes it (the test's writer):
# that read is stale, so the transaction cannot commit.
HANDLER = """\
import time

RUNS = {}


def handler(event, context):
    db = context.db
    op = event.get("op")
    if op == "probe" or op is None:
        return {"ok": True}
    try:
        if op == "get":
            return {"doc": db[event["c"]].get(event["id"])}
        if op == "insert":
            return {"doc": db[event["c"]].insert(event["doc"], id=event.get("id"))}
        if op == "runs":
            return {"runs": RUNS.get(event["key"], 0)}
    except context.db.DataError as error:
        return {"error": type(error).__name__, "status": error.status}
    if op == "stale":
        key = event["key"]
        RUNS[key] = RUNS.get(key, 0) + 1
        if RUNS[key] == 1:
            db["gate"].get("g")
            for _ in range(400):
                try:
                    db["gate"].get("g")
                except context.db.Conflict:
                    break
                time.sleep(0.02)
        db["notes"].insert({"runs": RUNS[key]}, id=key)
        return {"runs": RUNS[key]}
    raise ValueError(f"unknown op {op!r}")
"""


def _function(name: str, extra: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Function
        metadata: {{name: {name}}}
        spec:
          runtime: python3.11
          source: ../functions/notes
          handler: main.handler
          limits: {{timeout: 20s, memory: 64Mi}}
          scaling: {{minInstances: 1, maxInstances: 1, concurrency: 4}}
          access: {{roles: [public]}}
          healthCheck:
            - event: {{op: probe}}
        """) + textwrap.indent(extra, "  ")


COLLECTIONS = """\
apiVersion: fnctl/v1
kind: Collection
metadata: {name: notes}
spec:
  schema: {type: object}
---
apiVersion: fnctl/v1
kind: Collection
metadata: {name: gate}
spec:
  schema: {type: object, required: [n], properties: {n: {type: integer}}}
"""
POLICY = """\
apiVersion: fnctl/v1
kind: Policy
metadata: {name: data}
spec:
  roles:
    admin: {read: ["*"], write: ["*"]}
    "function:keeper": {read: [notes], write: [notes]}
"""
FUNCTIONS = {
    "plain": "",  # runAs: caller: an anonymous caller has no rights on notes
    "keeper": "runAs: function\n",
    "retried": "transaction: {retries: 3}\n",
    "egress": "transaction: {retries: 3}\nnetwork: egress\n",
}


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str, project_states: StateFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("procs") / "project"
    project = make_project(root, docker_client, base_image, project_states)
    proc = None
    try:
        port = gateway_port(project, "notes", HANDLER)
        manifests = project.root / "manifests"
        for name, extra in FUNCTIONS.items():
            (manifests / f"{name}.yaml").write_text(_function(name, extra), encoding="utf-8")
        (manifests / "collections.yaml").write_text(COLLECTIONS, encoding="utf-8")
        (manifests / "policy.yaml").write_text(POLICY, encoding="utf-8")
        project.ok("validate")
        project.ok("apply")
        tokens, subjects = api_keys(project, [("admin", ("admin",))])
        proc = start_gateway(project, port)
        live = Live(project, port, tokens, subjects)
        status, body = live.rest(
            "POST",
            "/v1/batch",
            "admin",
            {"operations": [{"op": "insert", "collection": "gate", "id": "g", "document": {"n": 0}}]},
        )
        assert status == 200, body
        yield live
    finally:
        stop_gateway(proc)
        cleanup(project)


def _changes(live: Live, collection: str) -> list[ChangeRow]:
    documents = docstore.open_at(live.project.location)
    try:
        return [c for c in documents.changes(0, "", [collection], 100_000)]
    finally:
        documents.close()


def test_a_run_as_function_function_has_the_role_its_policy_grants(live: Live) -> None:
    # granted by the manifests' Policy to function:keeper: it writes and reads notes for an anonymous caller
    status, body = live.invoke("keeper", {"op": "insert", "c": "notes", "id": "kept", "doc": {"v": 1}})
    assert status == 200 and body["doc"]["createdBy"] == "function:keeper", body
    status, body = live.invoke("keeper", {"op": "get", "c": "notes", "id": "kept"})
    assert status == 200 and body["doc"]["data"] == {"v": 1}, body
    # only notes: the gate collection is not granted to it (unreadable: 404; unwritable: 403)
    status, body = live.invoke("keeper", {"op": "get", "c": "gate", "id": "g"})
    assert body == {"error": "NotFound", "status": 404}, body
    status, body = live.invoke("keeper", {"op": "insert", "c": "gate", "doc": {"n": 1}})
    assert body == {"error": "Forbidden", "status": 403}, body
    # the same code running with its caller's rights has none of them
    status, body = live.invoke("plain", {"op": "get", "c": "notes", "id": "kept"})
    assert body == {"error": "NotFound", "status": 404}, body
    status, body = live.invoke("plain", {"op": "insert", "c": "notes", "doc": {"v": 2}})
    assert body == {"error": "Forbidden", "status": 403}, body
    # the write is in the change log as the function's, from keeper
    change = [c for c in _changes(live, "notes") if c.id == "kept"][0]
    assert (change.actor, change.function) == ("function:keeper", "keeper")

    def audited() -> bool:
        with live.project.store() as store:
            rows = store.raw().query("SELECT actor, action, target FROM audit WHERE command = 'data'")
        return ("function:keeper", "data.get", "notes/kept") in [tuple(r) for r in rows]

    until(audited, "the runAs: function read in the audit")


class GateWriter:
    """Writes the gate document again and again while an invocation is in flight (the concurrent writer)."""

    def __init__(self, live: Live) -> None:
        self.live, self.stop, self.writes = live, threading.Event(), 0
        self.failed: list[Any] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            status, doc = self.live.rest("GET", "/v1/collections/gate/docs/g", "admin")
            assert status == 200, doc
            status, body = self.live.rest(
                "PATCH",
                "/v1/collections/gate/docs/g",
                "admin",
                {"n": doc["data"]["n"] + 1},
                {"If-Match": f'"{doc["version"]}"', "Content-Type": "application/merge-patch+json"},
            )
            if status == 200:
                self.writes += 1
            else:
                self.failed.append(body)

    def __enter__(self) -> GateWriter:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_a_conflicted_procedure_without_egress_is_run_again(live: Live) -> None:
    with GateWriter(live) as writer:
        status, body = live.invoke("retried", {"op": "stale", "key": "r1"}, "admin")
    assert writer.writes > 0, writer.failed[:1]
    assert status == 200 and body == {"runs": 2}, body  # the first run conflicted, the re-run committed
    status, body = live.invoke("retried", {"op": "runs", "key": "r1"})
    assert body == {"runs": 2}, body
    status, doc = live.rest("GET", "/v1/collections/notes/docs/r1", "admin")
    assert status == 200 and doc["data"] == {"runs": 2} and doc["version"] == 1, doc  # the first run's write: never
    assert [c.id for c in _changes(live, "notes")].count("r1") == 1


def test_a_conflicted_procedure_with_egress_is_answered_409_and_not_run_again(live: Live) -> None:
    with GateWriter(live) as writer:
        status, body = live.invoke("egress", {"op": "stale", "key": "e1"}, "admin")
    assert writer.writes > 0, writer.failed[:1]
    assert status == 409, body
    status, body = live.invoke("egress", {"op": "runs", "key": "e1"})
    assert body == {"runs": 1}, body  # run once: its side effects outside the data plane are not repeated
    status, doc = live.rest("GET", "/v1/collections/notes/docs/e1", "admin")
    assert status == 404, doc
    assert "e1" not in [c.id for c in _changes(live, "notes")]
