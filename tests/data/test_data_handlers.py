"""`context.db` from real handlers in real containers, through a real `fnctl serve`: the caller's rights inside
the handler, runAs: function (audited), LimitExceeded past limits.dbOperations, a procedure that raises writes
nothing, the bank-transfer invariant under concurrent procedures (conflicts retried or 409), and
`invoke --local` with a working context.db."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from deploy_helpers import Project, cleanup, make_project, until
from pgserver import StateFactory

from fnctl.data.plane import DataPlane
from fnctl.gateway import keys
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore
from fnctl.state.auditlog import AuditFilter, invocation_records

pytestmark = pytest.mark.docker

HANDLER = """\
def handler(event, context):
    db = context.db
    op = event.get("op")
    try:
        if op == "probe" or op is None:
            return {"ok": True}
        if op == "get":
            return {"doc": db[event["c"]].get(event["id"])}
        if op == "insert":
            return {"doc": db[event["c"]].insert(event["doc"], id=event.get("id"))}
        if op == "find":
            return {"page": db[event["c"]].find(event.get("filter"))}
        if op == "loop":  # reads until a limit stops it, and catches the error
            done = 0
            try:
                for _ in range(event["n"]):
                    db["accounts"].get("a0")
                    done += 1
            except context.db.LimitExceeded:
                return {"caught": done}
            return {"done": done}
        if op == "insert_then_raise":
            db["accounts"].insert({"balance": 1}, id=event["id"])
            raise RuntimeError("failed after writing")
        if op == "transfer":
            accounts = db["accounts"]
            src, dst = accounts.get(event["from"]), accounts.get(event["to"])
            accounts.update(src["id"], {"balance": src["data"]["balance"] - event["amount"]})
            accounts.update(dst["id"], {"balance": dst["data"]["balance"] + event["amount"]})
            return {"moved": event["amount"]}
    except context.db.DataError as error:
        return {"error": type(error).__name__, "status": error.status}
    raise ValueError(f"unknown op {op!r}")
"""

COLLECTIONS: dict[str, dict[str, Any]] = {
    "accounts": {"schema": {"type": "object", "required": ["balance"], "properties": {"balance": {"type": "integer"}}}},
    "secrets": {"schema": {"type": "object"}},
}
POLICY = {
    "roles": {
        "clerk": {"read": ["accounts"], "write": ["accounts"]},
        "admin": {"read": ["*"], "write": ["*"]},
        "function:self-data": {"read": ["secrets"]},
    }
}


def _manifest(name: str, extra: str, scaling: str) -> str:
    limits = "{timeout: 5s, memory: 64Mi, dbOperations: 5}" if name == "limited" else "{timeout: 5s, memory: 64Mi}"
    return textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Function
        metadata: {{name: {name}}}
        spec:
          runtime: python3.11
          source: ../functions/data
          handler: main.handler
          limits: {limits}
          scaling: {scaling}
          access: {{roles: [public]}}
          healthCheck:
            - event: {{op: probe}}
        """) + textwrap.indent(extra, "  ")


FUNCTIONS = {
    "data": "",
    "self-data": "runAs: function\n",
    "limited": "",
    "proc": "transaction: {retries: 3}\n",
    "transfer": "transaction: {retries: 10}\n",
}


@dataclass
class Live:
    project: Project
    port: int
    tokens: dict[str, str]
    subjects: dict[str, str]

    def invoke(self, function: str, event: Any, who: str | None = None) -> tuple[int, Any]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        try:
            connection.request("POST", f"/invoke/{function}", body=json.dumps(event).encode(), headers=headers)
            response = connection.getresponse()
            body = response.read()
            return response.status, json.loads(body) if body else None
        finally:
            connection.close()

    def trigger_runs(self, trigger: str) -> list[int]:
        """The statuses of `trigger`'s runs in the invocation audit, oldest first."""
        with self.project.store() as store:
            return [r.status for r in invocation_records(store, AuditFilter(), limit=10000) if r.trigger == trigger]

    def patch_racing_the_operator(self, function: str, what: str) -> tuple[int, Any]:
        """alice's merge-patch {"v": 1} of races/r1, during which, once `function`'s hook runs, the operator forces
        {"by": "operator"} in without hooks: the answer alice got."""
        answer: list[tuple[int, Any]] = []
        headers = {"If-Match": "*", "Content-Type": "application/merge-patch+json"}
        patching = threading.Thread(
            target=lambda: answer.append(
                self.rest("PATCH", "/v1/collections/races/docs/r1", "alice", {"v": 1}, headers)
            )
        )
        patching.start()
        until(lambda: self.running(function), what)
        self.project.ok("data", "patch", "races", "r1", "-d", '{"by": "operator"}', "--force", "--no-hooks")
        patching.join(timeout=60)
        return answer[0]

    def metrics(self) -> str:
        """The gateway's /metrics exposition, as text."""
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def running(self, function: str) -> bool:
        """Whether the gateway's /metrics shows a request of `function` in flight."""
        return any(
            line.startswith("fnctl_inflight_requests")
            and f'function="{function}"' in line
            and not line.endswith(" 0.0")
            for line in self.metrics().splitlines()
        )

    def rest(
        self, method: str, path: str, who: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"Authorization": f"Bearer {self.tokens[who]}", "Content-Type": "application/json", **(headers or {})}
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body).encode(), headers=sent)
            response = connection.getresponse()
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
        finally:
            connection.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_port(project: Project, source: str, handler: str) -> int:
    """A free port of 127.0.0.1, written into the project's fnctl.toml as its gateway's address, with `handler`
    written as functions/<source>/main.py; the port."""
    port = _free_port()
    with (project.root / "fnctl.toml").open("a", encoding="utf-8") as config:
        config.write(f'\n[gateway]\naddress = "127.0.0.1:{port}"\n')
    code = project.root / "functions" / source
    code.mkdir(parents=True)
    (code / "main.py").write_text(handler, encoding="utf-8")
    return port


def api_keys(project: Project, holders: Iterable[tuple[str, tuple[str, ...]]]) -> tuple[dict[str, str], dict[str, str]]:
    """An API key of the default tenant for each (name, roles): the secrets and the subjects, by name."""
    tokens, subjects = {}, {}
    with project.store() as store:
        for name, roles in holders:
            key, secret = keys.create(store, name, roles, None, "test")
            tokens[name], subjects[name] = secret, f"key:{key.id}"
    return tokens, subjects


def stop_gateway(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def _ready(port: int) -> bool:
    import http.client

    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False


def start_gateway(project: Project, port: int, *, timeout: float = 90) -> subprocess.Popen[bytes]:
    """`fnctl serve` for `project` on `port` (its fnctl.toml), ready; its stderr appended to serve.err beside it."""
    err = (project.root.parent / "serve.err").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve"],
        cwd=project.root,
        env=project.environ(),
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    until(lambda: _ready(port) or proc.poll() is not None, "the gateway to be ready", timeout=timeout)
    assert proc.poll() is None, (project.root.parent / "serve.err").read_text()
    return proc


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str, project_states: StateFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("data") / "project"
    project = make_project(root, docker_client, base_image, project_states)
    project.env["XDG_CACHE_HOME"] = str(root.parent / "cache")  # invoke --local's data file, private to the test
    proc = None
    try:
        port = gateway_port(project, "data", HANDLER)
        for name, extra in FUNCTIONS.items():
            scaling = (
                "{minInstances: 2, maxInstances: 2, concurrency: 8}"
                if name == "transfer"
                else "{minInstances: 1, maxInstances: 2, concurrency: 8}"
            )
            (project.root / "manifests" / f"{name}.yaml").write_text(_manifest(name, extra, scaling), encoding="utf-8")
        project.ok("apply")
        # The collections and the Policy, as `apply` will publish them (its collection sync is another change)
        documents = docstore.open_at(project.location)
        DataPlane(documents, lambda: ()).sync_collections(
            [parse_collection(n, spec) for n, spec in COLLECTIONS.items()], prune=False, force=False
        )
        documents.close()
        with project.store() as store:
            store.set_resources("Policy", {"data": POLICY})
        # the default tenant's, as --local's
        tokens, subjects = api_keys(project, (("alice", ("clerk",)), ("admin", ("admin",)), ("other", ("visitor",))))
        proc = start_gateway(project, port)
        live = Live(project, port, tokens, subjects)
        accounts = [
            {"op": "insert", "collection": "accounts", "id": f"a{i}", "document": {"balance": 100}} for i in range(20)
        ]
        status, body = live.rest(
            "POST",
            "/v1/batch",
            "admin",
            {
                "operations": [
                    *accounts,
                    {"op": "insert", "collection": "secrets", "id": "s1", "document": {"value": "x"}},
                ]
            },
        )
        assert status == 200, body
        yield live
    finally:
        stop_gateway(proc)
        cleanup(project)


def test_context_db_uses_the_callers_rights(live: Live) -> None:
    status, body = live.invoke("data", {"op": "get", "c": "accounts", "id": "a1"}, "alice")
    assert status == 200 and body["doc"]["data"] == {"balance": 100}, body
    # an unprivileged or anonymous caller: NotFound on reads (never Forbidden), Forbidden on writes
    for who in ("other", None):
        status, body = live.invoke("data", {"op": "get", "c": "accounts", "id": "a1"}, who)
        assert status == 200 and body == {"error": "NotFound", "status": 404}, body
        status, body = live.invoke("data", {"op": "insert", "c": "accounts", "doc": {"balance": 1}}, who)
        assert status == 200 and body == {"error": "Forbidden", "status": 403}, body
    # the caller's rights, never the function's: alice cannot read secrets through `data`
    status, body = live.invoke("data", {"op": "get", "c": "secrets", "id": "s1"}, "alice")
    assert body == {"error": "NotFound", "status": 404}, body
    # a write is in the change log with the caller as actor and the function and revision it came from
    status, body = live.invoke(
        "data", {"op": "insert", "c": "accounts", "id": "by-alice", "doc": {"balance": 0}}, "alice"
    )
    assert status == 200 and body["doc"]["createdBy"] == live.subjects["alice"], body
    documents = docstore.open_at(live.project.location)
    try:
        change = [c for c in documents.changes(0, "", ["accounts"], 1000) if c.id == "by-alice"][0]
    finally:
        documents.close()
    assert (change.actor, change.function, change.revision) == (live.subjects["alice"], "data", 1)
    # schema violations come back typed, with their paths
    status, body = live.invoke("data", {"op": "insert", "c": "accounts", "doc": {"balance": "lots"}}, "alice")
    assert body == {"error": "Invalid", "status": 400}, body


def test_run_as_function_uses_the_functions_role_and_is_audited(live: Live) -> None:
    status, body = live.invoke("self-data", {"op": "get", "c": "secrets", "id": "s1"}, None)
    assert status == 200 and body["doc"]["data"] == {"value": "x"}, body
    status, body = live.invoke("self-data", {"op": "get", "c": "accounts", "id": "a1"}, "alice")
    assert body == {"error": "NotFound", "status": 404}, body  # the function's role reads secrets only

    def audited() -> bool:
        with live.project.store() as store:
            rows = store.raw().query("SELECT actor, action, target FROM audit WHERE command = 'data'")
        return ("function:self-data", "data.get", "secrets/s1") in [tuple(r) for r in rows]

    until(audited, "the runAs: function read in the audit")


def test_limit_exceeded_fails_the_invocation_even_when_caught(live: Live) -> None:
    status, body = live.invoke("limited", {"op": "loop", "n": 3}, "alice")
    assert status == 200 and body == {"done": 3}, body
    status, body = live.invoke("limited", {"op": "loop", "n": 50}, "alice")
    assert status == 429 and "LimitExceeded" in body["error"], body


def test_a_procedure_that_raises_writes_nothing(live: Live) -> None:
    status, body = live.invoke("proc", {"op": "insert_then_raise", "id": "p-raised"}, "alice")
    assert status != 200, body
    status, body = live.rest("GET", "/v1/collections/accounts/docs/p-raised", "admin")
    assert status == 404, body
    status, body = live.invoke("proc", {"op": "insert", "c": "accounts", "id": "p-ok", "doc": {"balance": 0}}, "alice")
    assert status == 200, body
    status, body = live.rest("GET", "/v1/collections/accounts/docs/p-ok", "admin")
    assert status == 200 and body["version"] == 1, body


def test_bank_transfers_keep_the_total_under_concurrent_procedures(live: Live) -> None:
    async def main() -> list[int]:
        statuses: list[int] = []
        headers = {"Authorization": f"Bearer {live.tokens['alice']}"}
        stop = time.monotonic() + 4.0  # bounded: a few seconds of contention, not a duration under test
        async with aiohttp.ClientSession(headers=headers) as session:

            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                while time.monotonic() < stop:
                    a, b = rng.sample(range(20), 2)
                    event = {"op": "transfer", "from": f"a{a}", "to": f"a{b}", "amount": rng.randint(1, 10)}
                    async with session.post(f"http://127.0.0.1:{live.port}/invoke/transfer", json=event) as r:
                        await r.read()
                        statuses.append(r.status)

            await asyncio.gather(*(worker(i) for i in range(12)))
        return statuses

    statuses = asyncio.run(asyncio.wait_for(main(), timeout=120))
    assert statuses.count(200) > 0 and set(statuses) <= {200, 409}, sorted(set(statuses))
    status, page = live.rest("GET", "/v1/collections/accounts/docs?limit=1000", "admin")
    balances = {d["id"]: d["data"]["balance"] for d in page["documents"] if d["id"] in {f"a{i}" for i in range(20)}}
    assert len(balances) == 20 and sum(balances.values()) == 2000, balances
    # every committed transfer is in the change log as one transaction of two writes
    documents = docstore.open_at(live.project.location)
    try:
        changes = [c for c in documents.changes(0, "", ["accounts"], 100_000) if c.function == "transfer"]
    finally:
        documents.close()
    assert len(changes) == 2 * statuses.count(200)


def test_invoke_local_has_a_working_context_db(live: Live, tmp_path: Path) -> None:
    project = live.project
    # the project's local data file: its collections follow the manifests; here there are none declared,
    # so a call names an unknown collection: a typed error, not a crash
    result = project.fnctl("invoke", "--local", "data", "-d", json.dumps({"op": "get", "c": "accounts", "id": "a1"}))
    assert result.code == 0 and json.loads(result.out) == {"error": "NotFound", "status": 404}, result.text
    # --data-from the running store: the gateway's data, as the operator
    result = project.fnctl(
        "invoke",
        "--local",
        "data",
        "--data-from",
        project.location.to_arg(),
        "-d",
        json.dumps({"op": "get", "c": "accounts", "id": "a1"}),
    )
    assert result.code == 0, result.text
    assert json.loads(result.out)["doc"]["id"] == "a1", result.out
    result = project.fnctl(
        "invoke",
        "--local",
        "data",
        "--data-from",
        project.location.to_arg(),
        "-d",
        json.dumps({"op": "insert", "c": "secrets", "id": "local-1", "doc": {"v": 1}}),
    )
    assert result.code == 0, result.text
    status, body = live.rest("GET", "/v1/collections/secrets/docs/local-1", "admin")
    assert status == 200 and body["createdBy"].startswith("operator:"), body
    # a local procedure that raises writes nothing either
    result = project.fnctl(
        "invoke",
        "--local",
        "proc",
        "--data-from",
        project.location.to_arg(),
        "-d",
        json.dumps({"op": "insert_then_raise", "id": "local-raised"}),
    )
    assert result.code != 0
    status, _ = live.rest("GET", "/v1/collections/accounts/docs/local-raised", "admin")
    assert status == 404
