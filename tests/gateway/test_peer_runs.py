"""What a node gateway with no instance of a function has a peer gateway run (engine = "swarm",
fnctl.gateway.peerinvoke), between two real gateways in this process on 127.0.0.1 (their pools the fakes of
test_gateway, holding what each node holds; their rows, keys and heartbeats real, in a SQLite state): a manual
trigger's run, once, as its caller, on the revision picked here; a data hook, as its writer, read-only there, its
verdict applied (and audited alike) here; the client's address a forwarder signs as the HTTP event's sourceIp;
a peer's refusal that ran nothing (overloaded) tried on the next peer; a data hook no gateway had room for
refusing the write alike whether it was to run here or on peers (503 with Retry-After, no fault). The whole
path on a 3-node swarm is tests/engine/test_swarm_apply.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from polling import eventually
from test_gateway import POLICIES, TRIGGERS, FakeAudit, FakeAuth, FakePool, FakeResult, _spec

from fnctl.data.caller import Caller
from fnctl.data.documents import WriteOp
from fnctl.data.hooks import ABORT_TYPE, HookAborted, HookOverloaded
from fnctl.data.plane import DataPlane
from fnctl.gateway import router
from fnctl.gateway.app import Gateway, GatewayLimits, make_app
from fnctl.gateway.audit import AuditLog
from fnctl.gateway.auth import Authenticator, Principal, PrincipalKind
from fnctl.gateway.broker import Broker
from fnctl.gateway.datacalls import parse_policies
from fnctl.gateway.forward import (
    FORWARDED_FOR,
    HOP_HEADER,
    NO_INSTANCE_HEADER,
    NOT_RUN_HEADER,
    PEER_PATH,
    Forwarder,
)
from fnctl.gateway.hooks import HookRunner
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.peerinvoke import peer_payload
from fnctl.gateway.poolhost import Overloaded, Unavailable
from fnctl.gateway.pools import PoolManager
from fnctl.gateway.request import Call, LeanRequest
from fnctl.gateway.revisionpool import CallerIdentity
from fnctl.gateway.server import start_server
from fnctl.gateway.triggerhealth import TriggerStates
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.protocol import CallFailed, EncodedJson
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

RUNNER = {"Authorization": "Bearer ok:alice:ops"}  # may run the manual trigger `kick`
PINNING_RUNNER = {"Authorization": "Bearer ok:alice:ops,release"}  # and pin a revision of pub


def _table() -> router.Table:
    triggers = {
        **TRIGGERS,
        "kick": {"function": "pub", "manual": {"event": {"echo": "default"}}},
        "vet": {"function": "pub", "on": {"collection": "orders", "event": "beforeCreate"}},
    }
    policies = {**POLICIES, "runners": {"roles": {"ops": {"run": ["kick"]}}}}
    specs = {("pub", 1): _spec(["public"]), ("pub", 2): _spec(["public"])}
    return router.build_table({"pub": {1: 100, 2: 0}}, specs, triggers, policies)  # 2: by a pin only


@dataclass
class NodePool(FakePool):
    """test_gateway's pool, holding only `held`: anything else has no instance on this node (Unavailable, as a
    Swarm node's pool says). A before-hook's event answers its proposed document marked by this node, or an
    Abort for one that asks for it; whether its data session was read-only is recorded. `overloaded`: every
    invocation refused (as a full queue refuses it), nothing run."""

    held: set[tuple[str, int]] = field(default_factory=set)
    overloaded: bool = False
    retry_after: float = 3.0  # an overloaded node's estimate of when it has room (its 429's Retry-After)
    broker: Broker | None = None
    read_only: list[bool] = field(default_factory=list)

    def holds(self, function: str, revision: int) -> bool:
        return (function, revision) in self.held

    async def invoke(
        self, function: str, revision: int, event: Any, *, caller: CallerIdentity, request_id: str
    ) -> FakeResult:
        if (function, revision) not in self.held:
            raise Unavailable(f"no task of {function} revision {revision} on this node")
        if self.overloaded:
            raise Overloaded(self.retry_after)
        session = None if self.broker is None else self.broker.session(request_id)
        if session is not None:
            self.read_only.append(session.read_only)
        if isinstance(event, dict) and "proposed" in event:
            who = json.loads(caller.text) if isinstance(caller, EncodedJson) else caller  # as the runtime decodes it
            self.calls.append({"function": function, "event": event, "caller": who, "request_id": request_id})
            proposed = event["proposed"]
            if proposed.get("veto"):
                return FakeResult(Outcome(False, None, Failure.HANDLER_ERROR, f"{ABORT_TYPE}: too small", "", "", 1))
            return FakeResult(Outcome(True, {**proposed, "checkedOn": "b"}, None, "", "", "", 1.0))
        return await super().invoke(function, revision, event, caller=caller, request_id=request_id)


@dataclass
class Node:
    url: str
    gateway: Gateway
    pool: NodePool
    audit: FakeAudit
    forwarder: Forwarder
    broker: Broker


def _broker(path: Path) -> Broker:
    policies = parse_policies({"writers": {"roles": {"ops": {"read": ["orders"], "write": ["orders"]}}}})
    plane = DataPlane(docstore.connect(path), lambda: policies)
    plane.sync_collections([parse_collection("orders", {})], False, False)
    return Broker(plane)


@asynccontextmanager
async def _node(tmp_path: Path, name: str, state: StateLocation, held: set[tuple[str, int]]) -> AsyncIterator[Node]:
    tables = [_table()]
    pool, audit = NodePool(held=held), FakeAudit()
    limits = GatewayLimits(timeout_margin=0.5, reload_interval=0.02, drain_timeout=5)
    gateway = Gateway(
        pool=cast(PoolManager, pool),
        authenticator=cast(Authenticator, FakeAuth()),
        metrics=Metrics(),
        audit=cast(AuditLog, audit),
        source=lambda: tables.pop() if tables else None,
        limits=limits,
    )
    gateway.pool_ready = True
    # With a broker, the app serves the data API (/v1/collections/...) and the trigger API (manual runs).
    gateway.broker = pool.broker = broker = _broker(tmp_path / f"{name}.data.db")
    app = make_app(gateway)
    runner, port = await start_server(app, "127.0.0.1", 0, limits)
    url = f"http://127.0.0.1:{port}"
    gateway.forwarder = forwarder = Forwarder(state, node=name, address=url, held=lambda: held)
    stop = asyncio.Event()
    beating = asyncio.create_task(forwarder.run(stop))
    try:
        yield Node(url, gateway, pool, audit, forwarder, broker)
    finally:
        stop.set()
        await beating
        await runner.cleanup()
        await forwarder.close()
        broker.close_all()


@asynccontextmanager
async def _nodes(tmp_path: Path, *held: set[tuple[str, int]]) -> AsyncIterator[list[Node]]:
    """Node a's gateway with no instance of `pub`, then one node for each of `held`; a has seen the others'
    rows, and they know a's key."""
    state = StateLocation(tmp_path / "state" / "state.db")
    state.path.parent.mkdir()
    connect(state).close()
    async with AsyncExitStack() as stack:
        every = [set(), *held]
        nodes = [await stack.enter_async_context(_node(tmp_path, "abcdefgh"[i], state, h)) for i, h in enumerate(every)]
        a = nodes[0]
        await eventually(lambda: len(a.forwarder.rows) == len(nodes), "node a to see every node's gateway")
        await eventually(lambda: all(a.forwarder.id in n.forwarder.keys for n in nodes), "every node to know a's key")
        yield nodes


def _run(test: Any, tmp_path: Path, *held: set[tuple[str, int]]) -> None:
    async def main() -> None:
        async with _nodes(tmp_path, *(held or ({("pub", 1)},))) as nodes:
            await test(*nodes)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_manual_run_with_no_instance_here_runs_once_on_a_peer_as_its_caller(tmp_path: Path) -> None:
    async def check(a: Node, b: Node) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(a.url + "/v1/triggers/kick/run", json={"echo": {"hi": 1}}, headers=RUNNER) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"hi": 1}
                request_id = r.headers["X-Request-Id"]
                assert r.headers["X-Fnctl-Revision"] == "1"  # the revision that ran, as a run here answers
        [ran] = b.pool.calls  # once, on b, as alice, under a's request id
        assert ran["event"] == {"echo": {"hi": 1}} and ran["request_id"] == request_id
        assert (ran["caller"]["subject"], ran["caller"]["roles"]) == ("alice", ["ops"])
        assert a.pool.calls == []
        [(here,)] = [(r["outcome"],) for r in a.audit.rows if r["request_id"] == request_id]
        [there] = [r for r in b.audit.rows if r["request_id"] == request_id]
        assert here == "forwarded" and (there["outcome"], there["trigger"], there["revision"]) == ("ok", "kick", 1)
        assert there["principal"] == "alice" and b.pool.read_only == [False]

    _run(check, tmp_path)


def test_a_data_hook_with_no_instance_here_runs_on_a_peer_read_only_and_its_verdict_applies(
    tmp_path: Path,
) -> None:
    async def check(a: Node, b: Node) -> None:
        hooks = HookRunner(a.gateway, a.broker, TriggerStates(a.forwarder._path))
        writer = Caller.operator("ops-bot", "acme")
        try:
            [doc] = await hooks.commit_writes(writer, [WriteOp("insert", "orders", None, {"n": 5})])
            assert doc is not None and doc.data == {"n": 5, "checkedOn": "b"}  # b's rewrite, stored here
            with pytest.raises(HookAborted, match="too small"):  # b's veto: nothing written here
                await hooks.commit_writes(writer, [WriteOp("insert", "orders", "x", {"veto": True})])
        finally:
            hooks.states.close()
        assert [c["event"]["proposed"] for c in b.pool.calls] == [{"n": 5}, {"veto": True}]
        assert {c["caller"]["subject"] for c in b.pool.calls} == {writer.subject} and a.pool.calls == []
        assert b.pool.read_only == [True, True]  # its writes could not join a's transaction: refused there
        # The veto audited on b as the hook's verdict, as a hook run here audits it (not a 500 `error`).
        [(_, ok), (_, vetoed)] = [(r["request_id"], r) for r in b.audit.rows if r["trigger"] == "vet"]
        assert (ok["outcome"], ok["status"], vetoed["outcome"], vetoed["status"]) == ("ok", 200, "aborted", 422)
        assert [(r["outcome"], r["status"]) for r in a.audit.rows] == [("forwarded", 200), ("forwarded", 422)]

    _run(check, tmp_path)


def test_a_data_hook_no_gateway_has_room_for_refuses_the_write_alike_here_and_on_peers(tmp_path: Path) -> None:
    async def check(a: Node, b: Node, c: Node) -> None:
        for node in (b, c):  # both hold pub and refuse at admission (a full queue): nothing runs anywhere
            node.pool.overloaded = True
        b.pool.retry_after, c.pool.retry_after = 7.0, 2.0
        states = [TriggerStates(a.forwarder._path), TriggerStates(b.forwarder._path)]
        a.broker.hooks = HookRunner(a.gateway, a.broker, states[0])
        b.broker.hooks = HookRunner(b.gateway, b.broker, states[1])
        answers: dict[str, tuple[int, str | None, Any]] = {}
        try:
            async with aiohttp.ClientSession() as session:
                # a has no instance: every peer refused it (the soonest Retry-After, c's); b runs it here, full.
                for node, repeat in ((a, 3), (b, 1)):
                    for _ in range(repeat):  # as many as the hook's disableAfter (3): an overload is no fault
                        url = node.url + "/v1/collections/orders/docs"
                        async with session.post(url, json={"n": 1}, headers=RUNNER) as r:
                            answers[node.forwarder.node] = (r.status, r.headers.get("Retry-After"), await r.json())
                async with session.get(a.url + "/v1/collections/orders/docs", headers=RUNNER) as r:
                    assert r.status == 200 and (await r.json())["documents"] == []  # nothing written
            for name, seconds in (("a", 2), ("b", 7)):  # the same answer, but for when to come back
                status, retry_after, problem = answers[name]
                assert (status, retry_after) == (503, str(seconds)), problem
                assert problem["type"].endswith("/hook-overloaded") and problem["retryAfter"] == seconds
                assert "hook vet could not run (function pub is overloaded" in problem["detail"]
            # A handler's context.db write gets it too: its error's status and problem (with retryAfter).
            a.broker.open("inv-1", "pub", 1, Caller.operator("ops-bot", "acme"), router.DataSettings())
            with pytest.raises(CallFailed) as refused:
                await cast(Any, a.broker.call("pub", 1, "inv-1", "db.insert", {"collection": "orders", "document": {}}))
            assert refused.value.type == HookOverloaded.__name__ and refused.value.fields["status"] == 503
            assert refused.value.fields["problem"]["retryAfter"] == 2
            a.broker.close("inv-1")
            await states[0].refresh()
            assert not states[0].is_disabled("vet")  # four refusals for want of room: no faults counted
        finally:
            for s in states:
                s.close()
        assert b.pool.calls == c.pool.calls == []
        # Audited where refused: here as forwarded (every peer's 429), on b as the overload it is.
        assert {(r["outcome"], r["status"]) for r in a.audit.rows if r["trigger"] == "vet"} == {("forwarded", 429)}
        assert {(r["outcome"], r["status"]) for r in b.audit.rows if r["trigger"] == "vet"} == {("overloaded", 429)}

    _run(check, tmp_path, {("pub", 1)}, {("pub", 1)})


def test_a_read_only_session_refuses_writes_and_answers_reads(tmp_path: Path) -> None:
    broker = _broker(tmp_path / "data.db")
    try:
        settings = router.DataSettings()
        session = broker.open("i-1", "pub", 1, Caller.operator("ops-bot", "acme"), settings)
        session.read_only = True
        with pytest.raises(CallFailed, match="cannot write") as refused:
            broker.call("pub", 1, "i-1", "db.insert", {"collection": "orders", "data": {"n": 1}})
        assert (refused.value.type, refused.value.fields["status"]) == ("Forbidden", 403)
    finally:
        broker.close_all()


def test_the_http_events_source_ip_on_the_peer_is_the_signed_client_address_only(tmp_path: Path) -> None:
    async def check(a: Node, b: Node) -> None:
        # The client connects from 127.0.0.2: node a sees that address, node b sees a's connection (127.0.0.1).
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(a.url + "/hello/ann", json={}) as r:
                assert r.status == 200, await r.text()
            # Sent straight to b by the client with a made-up address and the hop header, unsigned: ignored.
            forged = {FORWARDED_FOR: "203.0.113.9", HOP_HEADER: a.forwarder.id}
            async with session.post(b.url + "/hello/bob", json={}, headers=forged) as r:
                assert r.status == 200, await r.text()
        events = [c["event"] for c in b.pool.calls]  # as the runtime decodes them
        sources = {e["pathParameters"]["name"]: e["requestContext"]["identity"]["sourceIp"] for e in events}
        assert sources == {"ann": "127.0.0.2", "bob": "127.0.0.2"}

    _run(check, tmp_path)


def test_a_pinned_manual_run_runs_the_pinned_revision_on_the_peer_and_a_peer_without_it_refuses(
    tmp_path: Path,
) -> None:
    async def check(a: Node, b: Node, c: Node) -> None:
        async with aiohttp.ClientSession() as session:
            pinned = {**PINNING_RUNNER, "X-Fnctl-Revision": "2"}  # revision 2 has no traffic: by the pin only
            async with session.post(a.url + "/v1/triggers/kick/run", json={}, headers=pinned) as r:
                assert r.status == 200, await r.text()
                request_id = r.headers["X-Request-Id"]
                assert r.headers["X-Fnctl-Revision"] == "2"
            [ran] = b.pool.calls  # the only node holding revision 2 ran it, on 2 (not its own pick, 1)
            assert (ran["revision"], ran["request_id"]) == (2, request_id)
            assert [r["revision"] for r in b.audit.rows if r["request_id"] == request_id] == [2]
            # Node c holds revision 1 only: told to run revision 2, it refuses, runs nothing, and says so.
            path, body = PEER_PATH + "pub", json.dumps({**payload_for(PINNING_RUNNER), "revision": 2}).encode()
            signed = a.forwarder.key.headers(a.forwarder.id, "pinned-2", path, body)
            headers = {"X-Request-Id": "pinned-2", "Content-Type": "application/json", **dict(signed)}
            async with session.post(c.url + path, data=body, headers=headers) as r:
                refusal = await r.json()
                assert r.status == 503 and r.headers[NO_INSTANCE_HEADER] == "c", refusal
        assert "pub revision 2 on node c" in refusal["message"] and "not forwarded again" in refusal["message"]
        assert c.pool.calls == []
        [audited] = [r for r in c.audit.rows if r["request_id"] == "pinned-2"]
        assert (audited["outcome"], audited["status"], audited["revision"]) == ("unavailable", 503, 2)

    _run(check, tmp_path, {("pub", 1), ("pub", 2)}, {("pub", 1)})


def payload_for(headers: dict[str, str]) -> dict[str, Any]:
    """A manual run of `kick` as the caller `headers` authenticate (FakeAuth's tokens)."""
    _, subject, roles = headers["Authorization"].removeprefix("Bearer ").split(":")
    principal = Principal(subject, tuple(roles.split(",")), "acme", PrincipalKind.KEY)
    return peer_payload("kick", {"echo": "ran"}, principal, 5.0)


def test_a_peers_overload_refusal_is_tried_on_the_next_peer_and_only_the_last_refusal_is_relayed(
    tmp_path: Path,
) -> None:
    async def check(a: Node, b: Node, c: Node) -> None:
        rows = {row.node: row for row in a.forwarder.rows}
        b.pool.overloaded = True  # b refuses at admission (a full queue): it runs nothing
        invocation = {**payload_for(RUNNER), "revision": 1}
        assert await a.forwarder.invoke("pub", invocation, "inv-1", [rows["b"], rows["c"]], 5) == (
            200,
            {
                "ok": True,
                "result": "ran",
                "failure": None,
                "message": "",
                "traceback": "",
                "logs": "line one\nline two\n",
                "durationMs": 1.5,
            },
            1,
            None,
        )
        request = LeanRequest(
            "POST", "/invoke/pub", ((b"Authorization", b"Bearer ok:alice:ops"),), None, b'{"echo": 7}', True
        )
        reply = await a.forwarder.forward(
            request, request.body, Call("http-1", "pub", None, None), [rows["b"], rows["c"]], 5
        )
        assert (reply.status, reply.body) == (200, b"7")
        assert [c_["request_id"] for c_ in c.pool.calls] == ["inv-1", "http-1"]
        # Both overloaded: each tried once, and the last refusal is the client's, with its Retry-After.
        c.pool.overloaded = True
        reply = await a.forwarder.forward(
            request, request.body, Call("http-2", "pub", None, None), [rows["b"], rows["c"]], 5
        )
        assert (reply.status, reply.headers["Retry-After"], reply.headers[NOT_RUN_HEADER]) == (429, "3", "overloaded")
        assert await a.forwarder.invoke("pub", invocation, "inv-2", [rows["b"], rows["c"]], 5) == (429, None, None, "3")
        # Each peer got each request once (audited there); b refused them all, c ran the first two.
        audited = {
            n.forwarder.node: [(r["request_id"], r["outcome"], r["status"]) for r in n.audit.rows] for n in (b, c)
        }
        assert audited["b"] == [(rid, "overloaded", 429) for rid in ("inv-1", "http-1", "http-2", "inv-2")]
        assert audited["c"] == [("inv-1", "ok", 200), ("http-1", "ok", 200)] + [
            (rid, "overloaded", 429) for rid in ("http-2", "inv-2")
        ]

    _run(check, tmp_path, {("pub", 1)}, {("pub", 1)})


def test_a_manual_run_every_peer_refused_answers_429_with_the_soonest_retry_after(tmp_path: Path) -> None:
    async def check(a: Node, b: Node, c: Node) -> None:
        b.pool.overloaded = c.pool.overloaded = True  # both refuse at admission: nothing runs anywhere
        b.pool.retry_after, c.pool.retry_after = 2.0, 7.0  # b has room first, whichever is tried last
        rows = {row.node: row for row in a.forwarder.rows}
        async with aiohttp.ClientSession() as session:
            for peers in ([rows["b"], rows["c"]], [rows["c"], rows["b"]]):
                a.forwarder.peers = lambda *_, order=peers: order  # type: ignore[method-assign]
                async with session.post(a.url + "/v1/triggers/kick/run", json={}, headers=RUNNER) as r:
                    assert r.status == 429, await r.text()
                    # As an overloaded gateway here answers: when to come back, and that nothing ran.
                    assert (r.headers.get("Retry-After"), r.headers.get(NOT_RUN_HEADER)) == ("2", "overloaded")
                    assert "X-Fnctl-Revision" not in r.headers
            request = LeanRequest("POST", "/invoke/pub", (), None, b"{}", True)
            reply = await a.forwarder.forward(
                request, b"{}", Call("http-1", "pub", None, None), [rows["b"], rows["c"]], 5
            )
            assert (reply.status, reply.headers["Retry-After"]) == (429, "2")  # a forwarded request's alike
        assert b.pool.calls == c.pool.calls == []
        assert [(r["outcome"], r["status"]) for r in a.audit.rows] == [("forwarded", 429)] * 2

    _run(check, tmp_path, {("pub", 1)}, {("pub", 1)})


def test_an_invocations_session_is_opened_by_its_first_call_with_the_callers_rights(tmp_path: Path) -> None:
    broker = _broker(tmp_path / "data.db")
    try:
        caller = Caller.operator("ops-bot", "acme")
        broker.defer("i-1", "pub", 1, caller, router.DataSettings(), read_only=True)
        assert broker.sessions == {} and broker.in_flight("i-1")  # nothing opened for an invocation with no call
        with pytest.raises(ValueError, match="in flight"):
            broker.open("i-1", "pub", 1, caller, router.DataSettings())
        with pytest.raises(CallFailed) as refused:  # the first call: the session, as `open` makes it
            broker.call("pub", 1, "i-1", "db.insert", {"collection": "orders", "data": {"n": 1}})
        assert (refused.value.type, refused.value.fields["status"]) == ("Forbidden", 403)
        session = broker.sessions["i-1"]
        assert session.caller == caller.calling_from("pub", 1) and session.read_only and session.txn is None
        with pytest.raises(CallFailed) as foreign:  # another function's instance cannot use it
            broker.call("other", 1, "i-1", "db.get", {"collection": "orders", "id": "x"})
        assert foreign.value.type == "NoInvocation"
        assert broker.close("i-1") is session and not broker.in_flight("i-1")
        broker.defer("i-2", "pub", 1, caller, router.DataSettings())
        assert broker.close("i-2") is None and broker.sessions == {}  # never called: never opened
        with pytest.raises(CallFailed) as late:
            broker.call("pub", 1, "i-2", "db.get", {"collection": "orders", "id": "x"})
        assert late.value.type == "NoInvocation"
    finally:
        broker.close_all()
