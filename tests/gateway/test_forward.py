"""Forwarding between node gateways (fnctl.gateway.forward) without Docker: the gateways' rows in the store on
both backends, the choice of peers, and one request forwarded to real HTTP servers on 127.0.0.1 standing in for
peers (what reaches them, what comes back, when the next peer is tried). The whole path on a 3-node swarm is
tests/engine/test_swarm_apply.py::test_a_node_gateway_without_an_instance_forwards_to_a_peer_that_has_one."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from polling import eventually, wait_until
from rollout_helpers import free_port

from fnctl.gateway.forward import HOP_HEADER, NO_INSTANCE_HEADER, NOT_RUN_HEADER, Forwarder, peers_for
from fnctl.gateway.httpevent import from_result
from fnctl.gateway.request import Call, LeanRequest, Reject
from fnctl.state import gatewayrows
from fnctl.state.gatewayrows import GatewayRow
from fnctl.state.location import StateLocation
from fnctl.state.store import connect


def _row(name: str, held: set[tuple[str, int]], address: str = "http://127.0.0.1:1", age: float = 0.0) -> GatewayRow:
    return GatewayRow(name, f"node-{name}", address, frozenset(held), time.time() - age)


def test_gateway_rows_beat_age_out_and_leave(state_location: StateLocation) -> None:
    store = connect(state_location)
    try:
        before = store.data_version()
        gatewayrows.beat(store, _row("a", {("web", 1), ("web", 2)}))
        gatewayrows.beat(store, _row("b", {("web", 1)}, age=10))  # silent for 10 s: not live
        gatewayrows.beat(store, _row("c", set(), age=120))  # long dead: deleted by the next beat
        if state_location.url is not None:  # PostgreSQL: heartbeats move no routing reload on other gateways
            assert store.data_version() == before
        gatewayrows.beat(store, _row("a", {("web", 2)}))
        live = gatewayrows.live(store, max_age=3.0)
        assert [(r.id, r.node, r.held) for r in live] == [("a", "node-a", frozenset({("web", 2)}))]
        assert {r.id for r in gatewayrows.live(store, max_age=60.0)} == {"a", "b"}
        gatewayrows.leave(store, "a")
        assert gatewayrows.live(store, max_age=3.0) == []
    finally:
        store.close()


def test_peers_hold_the_revision_are_live_and_those_holding_every_routed_revision_come_first() -> None:
    rows = [
        _row("me", {("web", 1), ("web", 2)}),
        _row("one", {("web", 1)}),
        _row("both", {("web", 1), ("web", 2)}),
        _row("other", {("web", 2)}),
        _row("stale", {("web", 1), ("web", 2)}, age=10),
    ]
    for _ in range(20):  # random among equals, never in the wrong order
        chosen = peers_for(rows, "me", "web", 1, [1, 2], {}, time.time())
        assert [r.id for r in chosen] == ["both", "one"]
    # the least recently failed first among equals
    chosen = peers_for(rows, "me", "web", 1, [1], {"both": time.monotonic()}, time.time())
    assert [r.id for r in chosen] == ["one", "both"]


class Peer:
    """A stand-in for a peer gateway on 127.0.0.1: records what it got, answers what it is told."""

    def __init__(self, answer: Callable[[web.Request], web.Response]) -> None:
        self.answer = answer
        self.got: list[tuple[str, str, CIMultiDict[str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((request.method, request.raw_path, CIMultiDict(request.headers), await request.read()))
        return self.answer(request)


@asynccontextmanager
async def serving(peer: Peer) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", peer.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _request(headers: list[tuple[bytes, bytes]], body: bytes = b'{"n":1}') -> LeanRequest:
    return LeanRequest("POST", "/invoke/web?x=%2F", tuple(headers), "10.1.2.3", body, True)


def _forwarder(tmp_path: Any, rows: list[GatewayRow]) -> Forwarder:
    forwarder = Forwarder(StateLocation(tmp_path / "state.db"), node="here", address=None, held=set)
    forwarder.rows = rows
    return forwarder


def test_a_request_goes_whole_with_the_callers_credentials_and_the_answer_comes_back(tmp_path: Any) -> None:
    asyncio.run(_goes_whole(tmp_path))


async def _goes_whole(tmp_path: Any) -> None:
    def answer(request: web.Request) -> web.Response:
        return web.Response(status=201, body=b'{"ok":true}', headers={"X-Fnctl-Revision": "2", "Connection": "close"})

    peer = Peer(answer)
    async with serving(peer) as address:
        forwarder = _forwarder(tmp_path, [_row("p", {("web", 2)}, address)])
        headers = [(b"Authorization", b"Bearer fn_secret"), (b"X-Request-Id", b"client-id"), (b"Keep-Alive", b"5")]
        call = Call("req-1", "web", None, "10.1.2.3")
        reply = await forwarder.forward(_request(headers), b'{"n":1}', call, forwarder.peers("web", 2, [2]), timeout=5)
        await forwarder.close()
    assert (reply.status, reply.body, reply.headers["X-Fnctl-Revision"]) == (201, b'{"ok":true}', "2")
    assert "Connection" not in reply.headers  # a hop-by-hop header is not relayed
    [(method, path, got, body)] = peer.got
    assert (method, path, body) == ("POST", "/invoke/web?x=%2F", b'{"n":1}')
    assert got["Authorization"] == "Bearer fn_secret"  # the peer authenticates the caller itself
    assert got["X-Request-Id"] == "req-1" and got[HOP_HEADER] == forwarder.id
    assert "Keep-Alive" not in got and "Content-Type" not in got and "Accept" not in got  # none added either


def test_a_refusal_says_it_ran_nothing_and_why_it_was_not_forwarded(tmp_path: Any) -> None:
    forwarder = _forwarder(tmp_path, [_row("p", {("web", 1)})])
    assert [r.id for r in forwarder.peers("web", 1, [1])] == ["p"] and forwarder.peers("web", 7, [7]) == []
    for forwarded, reason in ((True, "a forwarded request is not forwarded again"), (False, "no live gateway has one")):
        refused = forwarder.unavailable("web", 1, forwarded, "no task")
        assert refused.status == 503 and reason in refused.reason, refused.reason
        assert refused.headers[NO_INSTANCE_HEADER] == "here" and refused.headers["Retry-After"] == "1"


def test_the_next_peer_is_tried_after_one_that_ran_nothing(tmp_path: Any) -> None:
    asyncio.run(_next_peer(tmp_path))


async def _next_peer(tmp_path: Any) -> None:
    call = Call("req-2", "web", None, None)
    empty = Peer(lambda r: web.Response(status=503, headers={NO_INSTANCE_HEADER: "n1"}))
    full = Peer(lambda r: web.Response(status=200, body=b"{}"))
    async with serving(empty) as gone_address, serving(full) as address:
        unreachable = f"http://127.0.0.1:{free_port()}"
        # the peer that can serve is tried last (it lacks revision 2); the others fail without running
        # anything (nothing listening; "no instance"): the request reaches it
        both = {("web", 1), ("web", 2)}
        for attempt in range(3):
            rows = [_row("x", both, unreachable), _row("y", both, gone_address), _row("z", {("web", 1)}, address)]
            forwarder = _forwarder(tmp_path, rows)
            peers = forwarder.peers("web", 1, [1, 2])
            assert [p.id for p in peers][-1] == "z"
            reply = await forwarder.forward(_request([]), b"", call, peers, timeout=5)
            await forwarder.close()
            assert reply.status == 200, attempt
        # each said it ran nothing: a 503 that says so
        forwarder = _forwarder(tmp_path, [_row("y", both, gone_address)])
        with pytest.raises(Reject) as refused:
            await forwarder.forward(_request([]), b"", call, forwarder.peers("web", 1, [1]), timeout=5)
        await forwarder.close()
        assert refused.value.status == 503 and "no gateway that had one took it" in refused.value.reason
    assert len(empty.got) == 4 and len(full.got) == 3


def test_a_peers_answer_after_it_ran_is_relayed_and_never_sent_to_another(tmp_path: Any) -> None:
    asyncio.run(_ran_something(tmp_path))


async def _ran_something(tmp_path: Any) -> None:
    # A 429 without the gateway's mark: the handler's own answer (or a limit it went over): it ran.
    answered = Peer(lambda r: web.Response(status=429, body=b'{"mine":1}'))
    other = Peer(lambda r: web.Response(status=200, body=b"{}"))
    async with serving(answered) as first, serving(other) as second:
        forwarder = _forwarder(tmp_path, [_row("p", {("web", 1)}, first), _row("q", {("web", 1)}, second)])
        peers = sorted(forwarder.peers("web", 1, [1]), key=lambda row: row.id)
        reply = await forwarder.forward(_request([]), b"", Call("req-3", "web", None, None), peers, timeout=5)
        await forwarder.close()
    assert (reply.status, reply.body, len(answered.got), other.got) == (429, b'{"mine":1}', 1, [])
    # Nor can a handler claim it ran nothing: the marks are the gateway's own, dropped from its response.
    marked = {NOT_RUN_HEADER: "overloaded", NO_INSTANCE_HEADER: "n1", "X-Mine": "kept"}
    assert from_result({"statusCode": 429, "headers": marked}).headers == [("X-Mine", "kept")]


def test_a_gateway_beats_while_it_runs_and_leaves_when_it_stops(state_location: StateLocation) -> None:
    forwarder = Forwarder(state_location, node="n1", address="http://127.0.0.1:9", held=lambda: {("web", 1)})
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    running = threading.Thread(target=lambda: loop.run_until_complete(forwarder.run(stop)), daemon=True)
    running.start()
    store = connect(state_location)
    try:

        def beating() -> list[GatewayRow]:
            return [r for r in gatewayrows.live(store, max_age=3.0) if r.id == forwarder.id]

        [row] = wait_until(beating, what="the gateway's row", timeout=10)
        assert (row.node, row.address, row.held) == ("n1", "http://127.0.0.1:9", frozenset({("web", 1)}))
        assert [r.id for r in forwarder.rows] == [forwarder.id]  # it reads the rows it forwards by
        loop.call_soon_threadsafe(stop.set)
        running.join(timeout=10)
        assert not running.is_alive() and beating() == []
    finally:
        store.close()
        loop.run_until_complete(forwarder.close())
        loop.close()


def test_forwarded_requests_are_capped_per_peer_at_what_it_takes_from_one_address_and_by_nothing_else(
    tmp_path: Any,
) -> None:
    asyncio.run(_capped(tmp_path))


async def _capped(tmp_path: Any) -> None:
    """A forwarded request counts once, where it runs (the peer's maxConcurrent): the forwarder holds no unit
    of its own, and no hidden cap either (an HTTP client's default pool of 100 connections once queued the
    101st request here though the peer had room). To each peer it opens at most what the peer accepts from one
    client address (maxConnectionsPerClient): more would be refused there; they wait here instead."""
    release = asyncio.Event()
    arrived: list[str] = []

    async def held(request: web.Request) -> web.Response:
        arrived.append(request.headers["X-Request-Id"])
        await release.wait()
        return web.Response(status=200, body=b"{}")

    for cap, sent in ((256, 101), (2, 3)):
        release.clear()
        arrived.clear()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", held)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        forwarder = Forwarder(
            StateLocation(tmp_path / "state.db"), node="here", address=None, held=set, max_connections=cap
        )
        forwarder.rows = [_row("p", {("web", 1)}, f"http://127.0.0.1:{port}")]
        peers = forwarder.peers("web", 1, [1])
        calls = [Call(f"req-{i}", "web", None, None) for i in range(sent)]
        replies = [asyncio.create_task(forwarder.forward(_request([]), b"", c, peers, timeout=30)) for c in calls]
        await eventually(lambda: len(arrived) == min(sent, cap), f"{min(sent, cap)} requests at the peer")
        assert len(arrived) == min(sent, cap)  # with a cap of 2, the third waits for a connection here
        release.set()
        assert [r.status for r in await asyncio.gather(*replies)] == [200] * sent
        assert sorted(arrived) == sorted(c.request_id for c in calls)  # each once
        await forwarder.close()
        await runner.cleanup()
