"""Peer gateways' own invocations, signed (fnctl.gateway.peerauth, Forwarder.invoke): each gateway's public key
in the store on both backends (and no secret there), what a signature covers and what is refused, and one invocation sent to real HTTP
servers on 127.0.0.1 standing in for peers. The whole path on a 3-node swarm is
tests/engine/test_swarm_apply.py::test_the_leaders_cron_ticks_run_on_a_peer_when_its_node_has_no_task_once_each."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from rollout_helpers import free_port
from test_forward import Peer, _request, _row, serving

from fnctl.gateway import peerauth
from fnctl.gateway.forward import (
    FORWARDED_FOR,
    HOP_HEADER,
    KEY_LOOKUP_EVERY,
    NO_INSTANCE_HEADER,
    PEER_PATH,
    Forwarder,
    client_of,
)
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.peerinvoke import outcome_from, outcome_json
from fnctl.gateway.request import Call, LeanRequest
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.state import gatewayrows
from fnctl.state.gatewayrows import GatewayRow
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

KEY = peerauth.PeerKey()  # gateway "g"'s


def test_each_gateway_publishes_its_own_public_key_and_no_secret_reaches_the_store(
    state_location: StateLocation,
) -> None:
    first, second = (
        Forwarder(state_location, node="n1", address=None, held=set),
        Forwarder(state_location, node="n2", address="http://127.0.0.1:9", held=set),
    )
    store = connect(state_location)
    try:
        for gateway in (first, second):
            gateway._beat(set())
        assert first.key.public != second.key.public  # one pair each, made when it started
        published = {row.id: row.public_key for row in gatewayrows.live(store, max_age=3.0)}
        assert published == {first.id: first.key.public, second.id: second.key.public} == second.keys
        assert (
            gatewayrows.public_key(store, first.id) == first.key.public and gatewayrows.public_key(store, "x") is None
        )
        assert first.peers("web", 1, [1]) == []  # one no other can reach (no address) publishes, is not a peer
        assert store._query("SELECT value FROM settings WHERE key LIKE '%peer%'") == []
    finally:
        store.close()
        for gateway in (first, second):
            asyncio.run(gateway.close())


def _signed(
    at: float | None = None, rid: str = "r1", path: str = "/_peer/invoke/web", body: bytes = b"{}", key: Any = KEY
) -> Any:
    at = time.time() if at is None else at
    return f"{at:.3f}", key.sign("g", float(f"{at:.3f}"), rid, path, body)


def test_a_signature_covers_gateway_time_request_id_path_and_body_and_is_accepted_once() -> None:
    verifier, public = peerauth.PeerVerifier(), KEY.public
    at, signature = _signed()
    assert verifier.verify(public, "g", at, signature, "r1", "/_peer/invoke/web", b"{}") is None
    assert verifier.verify(public, "g", at, signature, "r1", "/_peer/invoke/web", b"{}") == "replayed"
    at, signature = _signed(rid="r2")
    for key, gateway, rid, path, body in (
        (peerauth.PeerKey().public, "g", "r2", "/_peer/invoke/web", b"{}"),  # another gateway's key
        (public, "h", "r2", "/_peer/invoke/web", b"{}"),  # signed as another gateway
        (public, "g", "r3", "/_peer/invoke/web", b"{}"),
        (public, "g", "r2", "/_peer/invoke/admin", b"{}"),
        (public, "g", "r2", "/_peer/invoke/web", b'{"trigger":"other"}'),
    ):
        assert verifier.verify(key, gateway, at, signature, rid, path, body) == "bad signature"
    shifted = str(float(at) + 1)
    assert verifier.verify(public, "g", shifted, signature, "r2", "/_peer/invoke/web", b"{}") == "bad signature"
    assert verifier.verify(public, "g", at, "not base64!", "r2", "/_peer/invoke/web", b"{}") == "bad signature"
    old_at, old = _signed(at=time.time() - 120, rid="r4")
    refused = verifier.verify(public, "g", old_at, old, "r4", "/_peer/invoke/web", b"{}")
    assert refused == "signature too old or too early"
    assert verifier.verify(public, "g", None, None, "r5", "/_peer/invoke/web", b"{}") == "unsigned"  # a hop header
    assert verifier.verify(public, None, at, signature, "r2", "/_peer/invoke/web", b"{}") == "unsigned"
    assert verifier.verify(None, "g", at, signature, "r2", "/_peer/invoke/web", b"{}") == "not a gateway of this state"
    assert verifier.verify(public, "g", at, signature, "r2", "/_peer/invoke/web", b"{}") is None  # all refused above


def test_a_request_signed_with_a_key_not_the_named_gateways_published_one_is_refused(
    state_location: StateLocation,
) -> None:
    asyncio.run(_impostor(state_location))


async def _impostor(state_location: StateLocation) -> None:
    store = connect(state_location)
    receiver = Forwarder(state_location, node="here", address=None, held=set)
    try:
        gatewayrows.beat(store, GatewayRow("g", "node-g", "http://127.0.0.1:9", frozenset(), time.time(), KEY.public))
        path, body = "/_peer/invoke/web", b"{}"

        def headers(gateway: str, at: str, signature: str) -> dict[str, str]:
            return {peerauth.GATEWAY_HEADER: gateway, peerauth.TIME_HEADER: at, peerauth.SIGNATURE_HEADER: signature}

        # a key of its own, the request naming the live gateway "g": refused, though well formed and fresh
        at, forged = _signed(rid="i1", key=peerauth.PeerKey())
        assert await receiver.verify(headers("g", at, forged), "i1", path, body) == "bad signature"
        assert receiver.keys == {"g": KEY.public}  # read from g's row when the request named it (not known yet)
        at, signature = _signed(rid="i2")
        assert await receiver.verify(headers("g", at, signature), "i2", path, body) is None  # g's own key
        receiver._looked_up -= KEY_LOOKUP_EVERY  # as if the throttle of reads for unknown ids had passed
        refused = await receiver.verify(headers("nobody", at, signature), "i3", path, body)
        assert refused == "not a gateway of this state"
    finally:
        store.close()
        await receiver.close()


def test_an_outcome_crosses_as_it_was() -> None:
    outcome = Outcome(False, None, Failure.TIMEOUT, "slow", "tb", "logs", 12.5)
    assert outcome_from(json.loads(json.dumps(outcome_json(outcome)))) == outcome
    assert outcome_from(None) is None and outcome_from({"failure": "no such"}) is None


def test_an_invocation_goes_signed_to_the_next_peer_after_one_that_ran_nothing(tmp_path: Any) -> None:
    asyncio.run(_invocation(tmp_path))


async def _invocation(tmp_path: Any) -> None:
    verifier = peerauth.PeerVerifier()

    def run(request: web.Request) -> web.Response:
        return web.json_response({"status": 200, "outcome": outcome_json(Outcome(True, {"n": 1}, None, "", "", "", 1))})

    empty = Peer(lambda r: web.Response(status=503, headers={NO_INSTANCE_HEADER: "n1"}))
    full = Peer(run)
    async with serving(empty) as empty_address, serving(full) as address:
        rows = [_row("x", {("web", 1)}, f"http://127.0.0.1:{free_port()}"), _row("y", {("web", 1)}, empty_address)]
        rows.append(_row("z", {("web", 1)}, address))
        forwarder = Forwarder(StateLocation(tmp_path / "s.db"), node="here", address=None, held=set)
        forwarder.rows = rows
        payload = {"trigger": "every-second", "tenant": None, "event": {"a": 1}}
        peers = sorted(forwarder.peers("web", 1, [1]), key=lambda p: p.id)  # x (unreachable), y (empty), z
        status, outcome, revision, _ = await forwarder.invoke("web", payload, "tick-1", peers, timeout=5)
        await forwarder.close()
    assert (status, outcome_from(outcome), revision) == (200, Outcome(True, {"n": 1}, None, "", "", "", 1), None)
    assert len(empty.got) == 1 and len(full.got) == 1 and forwarder.forwarded == 1
    [(method, path, headers, body)] = full.got
    assert (method, path, json.loads(body)) == ("POST", f"{PEER_PATH}web", payload)
    assert headers["X-Request-Id"] == "tick-1" and headers[HOP_HEADER] == forwarder.id
    assert headers[peerauth.GATEWAY_HEADER] == forwarder.id
    refused = verifier.verify(
        forwarder.key.public, forwarder.id, headers[peerauth.TIME_HEADER], headers[peerauth.SIGNATURE_HEADER],
        "tick-1", path, body,
    )  # fmt: skip
    assert refused is None  # what the peer checks: signed with the key the sender published


def test_a_forwarded_request_passes_the_clients_address_signed_and_is_counted(tmp_path: Any) -> None:
    asyncio.run(_passes_the_address(tmp_path))


async def _passes_the_address(tmp_path: Any) -> None:
    peer = Peer(lambda r: web.Response(status=200, body=b"{}"))
    metrics = Metrics()
    async with serving(peer) as address:
        forwarder = Forwarder(StateLocation(tmp_path / "s.db"), node="here", address=None, held=set, metrics=metrics)
        forwarder.rows = [_row("p", {("web", 1)}, address)]
        # the client's own X-Forwarded-For and signature headers are not passed on: the forwarder's replace them
        sent = [(FORWARDED_FOR.encode(), b"6.6.6.6"), (peerauth.SIGNATURE_HEADER.encode(), b"forged")]
        call = Call("req-3", "web", None, "10.1.2.3")
        reply = await forwarder.forward(_request(sent), b"{}", call, forwarder.peers("web", 1, [1]), timeout=5)
        await forwarder.close()
    assert reply.status == 200
    assert b'fnctl_forwarded_requests_total{function="web"} 1.0' in metrics.render()
    [(method, path, got, _)] = peer.got
    assert got.getall(FORWARDED_FOR) == ["10.1.2.3"] and len(got.getall(peerauth.SIGNATURE_HEADER)) == 1
    # the peer (same state: it knows the forwarder's published key) takes the address from it, once
    peer_side = Forwarder(StateLocation(tmp_path / "s.db"), node="there", address=None, held=set)
    peer_side.keys = {forwarder.id: forwarder.key.public}
    headers = [(k.encode(), v.encode()) for k, v in got.items()]
    received = LeanRequest(method, path, tuple(headers), "192.0.2.7", b"{}", True)
    assert await client_of(peer_side, received) == "10.1.2.3"
    assert await client_of(peer_side, received) == "192.0.2.7"  # the same signed request again: a replay
    assert await client_of(None, received) == "192.0.2.7"  # not a Swarm node gateway: the connection's address
    await peer_side.close()


def test_an_x_forwarded_for_from_outside_is_ignored() -> None:
    asyncio.run(_from_outside())


async def _from_outside() -> None:
    gateway = Forwarder(StateLocation(Path("/nonexistent/s.db")), node="n", address=None, held=set)
    gateway.keys = {"forged": KEY.public}
    at, signature = f"{time.time():.3f}", "A" * 88
    for headers in (
        [(b"X-Forwarded-For", b"6.6.6.6")],  # no hop header
        [(b"X-Forwarded-For", b"6.6.6.6"), (HOP_HEADER.encode(), b"forged")],  # unsigned
        [(b"X-Forwarded-For", b"6.6.6.6"), (HOP_HEADER.encode(), b"forged"), (b"X-Request-Id", b"r9"),
         (peerauth.GATEWAY_HEADER.encode(), b"forged"), (peerauth.TIME_HEADER.encode(), at.encode()),
         (peerauth.SIGNATURE_HEADER.encode(), signature.encode())],
    ):  # fmt: skip
        request = LeanRequest("POST", "/invoke/web", tuple(headers), "192.0.2.7", b"{}", True)
        assert await client_of(gateway, request) == "192.0.2.7"
    await gateway.close()
