"""`kill -9` of a real `fnctl serve` while REST batches and procedures are in flight, then a restart: every
batch and every procedure is in the data file whole or not at all (checked by invariants on the documents and
the change log), the file is sound, and the restarted gateway serves it. Real containers for the procedures."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from deploy_helpers import Project, cleanup, make_project, until
from test_data_handlers import Live, gateway_port, start_gateway, stop_gateway

from fnctl.gateway import keys
from fnctl.state import docstore

pytestmark = pytest.mark.docker

HANDLER = """\
def handler(event, context):
    if event.get("op") == "probe":
        return {"ok": True}
    accounts = context.db["accounts"]
    src, dst = accounts.get(event["from"]), accounts.get(event["to"])
    accounts.update(src["id"], {"balance": src["data"]["balance"] - event["amount"]})
    accounts.update(dst["id"], {"balance": dst["data"]["balance"] + event["amount"]})
    return {"moved": event["amount"]}
"""
MANIFESTS = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: transfer}
spec:
  runtime: python3.11
  source: ../functions/transfer
  handler: main.handler
  limits: {timeout: 10s, memory: 64Mi}
  scaling: {minInstances: 2, maxInstances: 2, concurrency: 8}
  access: {roles: [public]}
  transaction: {retries: 10}
  healthCheck:
    - event: {op: probe}
---
apiVersion: fnctl/v1
kind: Collection
metadata: {name: accounts}
spec:
  schema: {type: object, required: [balance], properties: {balance: {type: integer}}}
---
apiVersion: fnctl/v1
kind: Collection
metadata: {name: items}
spec:
  schema: {type: object, required: [batch], properties: {batch: {type: string}}}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: data}
spec:
  roles:
    admin: {read: ["*"], write: ["*"]}
"""
BATCH = 40  # writes per batch
ACCOUNTS, TOTAL = 20, 20 * 100


@dataclass
class Crashable:
    project: Project
    port: int
    token: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Live:
        self.proc = start_gateway(self.project, self.port, timeout=120)
        return Live(self.project, self.port, {"admin": self.token}, {})

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_gateway(self.proc)


@pytest.fixture(scope="module")
def crashable(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str) -> Iterator[Crashable]:
    root = tmp_path_factory.mktemp("crash") / "project"
    project = make_project(root, docker_client, base_image)
    server = None
    try:
        port = gateway_port(project, "transfer", HANDLER)
        (project.root / "manifests" / "data.yaml").write_text(MANIFESTS, encoding="utf-8")
        project.ok("apply")
        with project.store() as store:
            _, secret = keys.create(store, "admin", ("admin",), None, "test")
        server = Crashable(project, port, secret)
        yield server
    finally:
        if server is not None:
            server.stop()
        cleanup(project)


@dataclass
class Load:
    """Requests sent without pause from a thread of their own until the gateway dies under them."""

    answered: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def run(
        self,
        worker: Callable[[aiohttp.ClientSession, int], Coroutine[Any, Any, None]],
        workers: int,
        headers: dict[str, str],
    ) -> threading.Thread:
        async def main() -> None:
            async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
                await asyncio.gather(*(worker(session, i) for i in range(workers)), return_exceptions=True)

        def target() -> None:
            try:
                asyncio.run(main())
            finally:
                self.done.set()

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread

    async def send(self, session: aiohttp.ClientSession, method: str, url: str, body: Any) -> int:
        self.in_flight += 1
        try:
            async with session.request(method, url, json=body) as response:
                await response.read()
                self.answered[response.status] += 1
                return response.status
        finally:
            self.in_flight -= 1


def _crash_under(server: Crashable, load: Load, thread: threading.Thread, enough: int) -> int:
    """SIGKILL the gateway once `enough` requests were answered 200 (bounded), with others still in flight."""
    until(lambda: load.answered[200] >= enough or load.done.is_set(), f"{enough} requests answered", timeout=120)
    assert not load.done.is_set(), load.answered
    in_flight = load.in_flight
    server.kill()
    thread.join(timeout=90)
    assert not thread.is_alive()
    return in_flight


def _data(server: Crashable) -> sqlite3.Connection:
    db = sqlite3.connect(docstore.data_path(server.project.state))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    return db


def test_kill_9_in_the_middle_of_batches_leaves_each_whole_or_absent(crashable: Crashable) -> None:
    live = crashable.start()
    load = Load()
    url = f"http://127.0.0.1:{live.port}/v1/batch"

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        for i in range(100_000):
            tag = f"w{n}-{i}"
            operations = [
                {"op": "insert", "collection": "items", "id": f"{tag}-{k}", "document": {"batch": tag}}
                for k in range(BATCH)
            ]
            status = await load.send(session, "POST", url, {"operations": operations})
            assert status == 200

    thread = load.run(worker, 8, {"Authorization": f"Bearer {live.tokens['admin']}"})
    in_flight = _crash_under(crashable, load, thread, 5)
    assert in_flight > 0
    answered = load.answered[200]
    db = _data(crashable)
    sizes = dict(db.execute("SELECT json_extract(data, '$.batch'), count(*) FROM docs_items GROUP BY 1").fetchall())
    assert sizes and set(sizes.values()) == {BATCH}, sizes  # no batch in part
    assert len(sizes) >= answered  # every batch answered 200 is there (and maybe some whose answer was lost)
    per_txn = Counter(t for (t,) in db.execute("SELECT txn FROM changes WHERE collection = 'items'").fetchall())
    assert set(per_txn.values()) == {BATCH} and len(per_txn) == len(sizes), per_txn.most_common(3)
    assert crashable.project.fnctl("audit", "verify").code == 0
    db.close()
    # the restarted gateway serves the same data and takes new batches
    live = crashable.start()
    tag = next(iter(sizes))
    status, doc = live.rest("GET", f"/v1/collections/items/docs/{tag}-0", "admin")
    assert status == 200 and doc["data"] == {"batch": tag}, doc
    status, body = live.rest(
        "POST",
        "/v1/batch",
        "admin",
        {
            "operations": [
                {"op": "insert", "collection": "items", "id": "after-restart", "document": {"batch": "after"}}
            ]
        },
    )
    assert status == 200, body
    crashable.stop()


def test_kill_9_while_procedures_commit_leaves_each_transfer_whole_or_absent(crashable: Crashable) -> None:
    live = crashable.start()
    status, body = live.rest(
        "POST",
        "/v1/batch",
        "admin",
        {
            "operations": [
                {"op": "insert", "collection": "accounts", "id": f"a{i}", "document": {"balance": 100}}
                for i in range(ACCOUNTS)
            ]
        },
    )
    assert status == 200, body
    load = Load()
    url = f"http://127.0.0.1:{live.port}/invoke/transfer"

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        rng = random.Random(n)
        while True:
            a, b = rng.sample(range(ACCOUNTS), 2)
            status = await load.send(
                session, "POST", url, {"from": f"a{a}", "to": f"a{b}", "amount": rng.randint(1, 10)}
            )
            assert status in (200, 409)

    thread = load.run(worker, 12, {"Authorization": f"Bearer {live.tokens['admin']}"})
    in_flight = _crash_under(crashable, load, thread, 20)
    assert in_flight > 0
    db = _data(crashable)
    rows = db.execute("SELECT id, version, json_extract(data, '$.balance') FROM docs_accounts").fetchall()
    assert len(rows) == ACCOUNTS and sum(r[2] for r in rows) == TOTAL, rows  # no transfer in part
    transfers = Counter(
        t
        for (t,) in db.execute(
            "SELECT txn FROM changes WHERE collection = 'accounts' AND function = 'transfer'"
        ).fetchall()
    )
    assert set(transfers.values()) == {2} and len(transfers) >= load.answered[200], transfers.most_common(3)
    # each account's version is its insert plus one per committed transfer that touched it
    updates = Counter(
        i for (i,) in db.execute("SELECT id FROM changes WHERE collection = 'accounts' AND op != 'insert'").fetchall()
    )
    assert {i: v for i, v, _ in rows} == {i: 1 + updates[i] for i, _, _ in rows}
    db.close()
    assert crashable.project.fnctl("audit", "verify").code == 0
    # after the restart, transfers commit again and the total holds
    live = crashable.start()
    until(
        lambda: live.invoke("transfer", {"from": "a0", "to": "a1", "amount": 1}, "admin")[0] == 200,
        "a transfer after the restart",
        timeout=120,
    )
    status, page = live.rest("GET", "/v1/collections/accounts/docs?limit=100", "admin")
    assert status == 200 and sum(d["data"]["balance"] for d in page["documents"]) == TOTAL
    crashable.stop()
