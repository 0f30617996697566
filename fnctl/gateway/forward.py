"""Forwarding between the gateways of a Swarm's nodes (engine = "swarm", docs/swarm.md "Forwarding"): a gateway
with no instance of the revision it routed a request to sends the request, whole, to a live gateway that has
one, and relays its answer.

- **Who has what**: every node gateway writes its row in the store (`fnctl.state.gatewayrows`: node, the
  address it is reached at, the revisions it has a ready instance of) every HEARTBEAT seconds and reads the
  others'; a row older than LIVE_FOR is not a peer.
- **The peer decides**: the request goes as the client sent it (method, path and query, headers with the
  caller's credentials, body), so the peer authenticates, authorizes and routes it itself from the same
  routing table (a canary's split stays right, a pin needs the caller's right to pin): nothing is trusted for
  having come from another gateway. The forwarder's choice of revision only chooses the peer (an invocation
  of its own carries its pick, signed: fnctl.gateway.peerinvoke).
- **One hop**: the forwarded request carries HOP_HEADER; a gateway never forwards a request that carries it.
  That is all the header does: a client that sends it can only stop its request from being forwarded.
- **Signed by its sender**: what a gateway asserts itself (the client's address it passes on, an invocation
  of its own it asks a peer to run) is signed with its own key (fnctl.gateway.peerauth), whose public half
  it publishes in its row; the receiver verifies it with the key of the gateway the request names.
- **Audit**: the forwarder audits a `forwarded` request (no revision: the peer chose it), the peer the
  invocation, under the same request id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from fnctl.errors import FnctlError
from fnctl.gateway import peerauth
from fnctl.gateway.httpevent import NO_INSTANCE_HEADER, NOT_RUN_HEADER
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.peerchoice import LIVE_FOR, peers_for, sooner
from fnctl.gateway.request import Call, Incoming, Reject, Reply
from fnctl.state import gatewayrows
from fnctl.state.gatewayrows import GatewayRow
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

__all__ = [
    "FORWARDED_FOR",
    "HOP_HEADER",
    "client_claim",
    "client_of",
    "NO_INSTANCE_HEADER",
    "NOT_RUN_HEADER",
    "PEER_PATH",
    "Forwarder",
    "PeerAnswer",
    "Relayed",
    "peers_for",
]

log = logging.getLogger("fnctl.gateway")
HOP_HEADER = "X-Fnctl-Forwarded-By"  # on a forwarded request: the forwarder's id; never forwarded again
PEER_PATH = "/_peer/invoke/"  # + function: a peer gateway's own invocation, signed (fnctl.gateway.peerauth)
HEARTBEAT = 1.0  # seconds between a gateway's writes of its row (and reads of the others')
CONNECT_TIMEOUT = 2.0
# A request naming a gateway whose key is not known yet (one started since the last beat) makes the gateway read
# that row; at most this often (seconds), so that requests naming made-up gateways cannot load the store.
KEY_LOOKUP_EVERY = 0.1
# Not passed on, either way: they describe one connection, not the request (RFC 9110 7.6.1), or are recomputed.
_HOP_BY_HOP = frozenset(
    "connection keep-alive proxy-connection proxy-authenticate te trailer transfer-encoding upgrade host "
    "content-length date server".split()
)


FORWARDED_FOR = "X-Forwarded-For"
# Set by the forwarder itself, never passed on as the client sent them.
_REPLACED = frozenset(
    (
        "x-request-id",
        HOP_HEADER.lower(),
        FORWARDED_FOR.lower(),
        peerauth.GATEWAY_HEADER.lower(),
        peerauth.TIME_HEADER.lower(),
        peerauth.SIGNATURE_HEADER.lower(),
    )
)


def client_claim(method: str, raw_path: str, client: str) -> str:
    """What a forwarder signs of a forwarded request (as `PeerKey.sign`'s path): the request line and the
    client's address it passes on. The body is not covered: the caller's own credentials are its authority,
    checked by the peer; the signature vouches only for the address."""
    return f"forwarded {method} {raw_path} for {client}"


async def client_of(forwarder: Forwarder | None, request: Incoming) -> str | None:
    """The client's address of a request: the connection's, or, on a request a peer gateway forwarded and
    signed (the hop header, FORWARDED_FOR, a good signature), the address of the client it came from. An
    X-Forwarded-For from anyone else is ignored."""
    if forwarder is None:
        return request.remote
    headers = request.headers
    claimed = headers.get(FORWARDED_FOR)
    if claimed is None or HOP_HEADER not in headers:
        return request.remote
    claim = client_claim(request.method, request.raw_path, claimed)
    refused = await forwarder.verify(headers, headers.get("X-Request-Id", ""), claim, b"")
    if refused is not None:
        log.info("X-Forwarded-For ignored (%s)", refused)
        return request.remote
    return claimed


class PeerAnswer(NamedTuple):
    """What became of an invocation of this gateway's own sent to peers (`Forwarder.invoke`)."""

    status: int
    outcome: dict[str, Any] | None  # as the peer gave it (None: it ran nothing, or failed)
    revision: int | None  # the revision the peer ran (None: it ran none, or did not say)
    retry_after: str | None  # a refusal's Retry-After (every peer overloaded: the soonest of theirs)


class Relayed(Exception):
    """A request answered by a peer gateway: its answer, relayed as it is."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Forwarder:
    """This gateway's row in the store, the peers' rows as last read, and the forwarding of one request."""

    def __init__(
        self,
        store_path: StateLocation,
        *,
        node: str,
        address: str | None,
        held: Callable[[], set[tuple[str, int]]],
        metrics: Metrics | None = None,
        max_connections: int = 256,
    ) -> None:
        self.id = f"{node}-{uuid.uuid4().hex[:12]}"
        self.max_connections = max_connections  # to each peer: what it takes from one address (maxConnectionsPerClient)
        self.node, self.address, self.held = node, address, held
        self.rows: list[GatewayRow] = []
        self.forwarded = 0  # requests relayed (for tests and benchmarks)
        self._metrics = metrics  # fnctl_forwarded_requests{function}
        self._path = store_path
        self._store: Store | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fnctl-forward")
        self._failed: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self.key = peerauth.PeerKey()  # this gateway's own: the private half only ever in memory
        self.keys: dict[str, str] = {}  # the live gateways' public keys by id, as last read
        self.verifier = peerauth.PeerVerifier()
        self._looked_up = 0.0  # time.monotonic() of the last read of one unknown gateway's key

    # ---- the row and the peers' ----

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until `stop`, then leave (delete this gateway's row)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await loop.run_in_executor(self._worker, self._beat, set(self.held()))
            except Exception as exc:  # noqa: BLE001 -- the database away: the rows read keep ageing out, and
                # the next beat connects again (a heartbeat that stopped for good would end forwarding here)
                log.warning("gateway %s: writing its heartbeat: %s", self.id, getattr(exc, "message", exc))
                await loop.run_in_executor(self._worker, self._drop_store)
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT)
            except TimeoutError:
                pass
        try:
            await loop.run_in_executor(self._worker, self._with_store, partial(gatewayrows.leave, gateway_id=self.id))
        except FnctlError as exc:
            log.warning("gateway %s: deleting its row: %s", self.id, exc.message)

    def _beat(self, held: set[tuple[str, int]]) -> None:
        now = time.time()
        # A gateway no other can reach (address "") forwards, but is not forwarded to; its row still publishes
        # its key, for the peers it sends requests to.
        row = GatewayRow(self.id, self.node, self.address or "", frozenset(held), now, self.key.public)
        self._with_store(partial(gatewayrows.beat, row=row))
        self.rows = self._with_store(partial(gatewayrows.live, max_age=LIVE_FOR, now=now))
        self.keys = {row.id: row.public_key for row in self.rows}

    def _drop_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:  # noqa: BLE001 -- a connection already broken may fail to close
                log.debug("closing a broken store connection: %s", exc)

    def _with_store(self, fn: Callable[[Store], Any]) -> Any:
        if self._store is None:
            self._store = connect(self._path)
        return fn(self._store)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._store is not None:
            await asyncio.get_running_loop().run_in_executor(self._worker, self._store.close)
        self._worker.shutdown(wait=False)

    # ---- signatures ----

    async def verify(self, headers: Mapping[str, str], request_id: str, path: str, body: bytes) -> str | None:
        """None when the request is signed by the live gateway it names (its key as published in its row);
        else why not."""
        gateway = headers.get(peerauth.GATEWAY_HEADER)
        key = None if not gateway else await self.public_key(gateway)
        at, signature = headers.get(peerauth.TIME_HEADER), headers.get(peerauth.SIGNATURE_HEADER)
        return self.verifier.verify(key, gateway, at, signature, request_id, path, body)

    async def public_key(self, gateway: str) -> str | None:
        """`gateway`'s public key: as read at the last beat, else read from its row now (a gateway started
        since), at most every KEY_LOOKUP_EVERY seconds; None when it has no row (or the store is away)."""
        known = self.keys.get(gateway)
        if known is not None:
            return known
        now = time.monotonic()
        if now - self._looked_up < KEY_LOOKUP_EVERY:
            return None
        self._looked_up = now
        try:
            key: str | None = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._with_store, partial(gatewayrows.public_key, gateway_id=gateway)
            )
        except Exception as exc:  # noqa: BLE001 -- the database away: the request is refused, not failed
            log.warning("gateway %s: reading gateway %s's key: %s", self.id, gateway[:64], getattr(exc, "message", exc))
            return None
        if key is not None:
            self.keys = {**self.keys, gateway: key}
        return key

    # ---- one request ----

    def peers(self, function: str, revision: int, routed: Iterable[int]) -> list[GatewayRow]:
        """The live peers to forward a request for `revision` to, best first (`peers_for`)."""
        return peers_for(self.rows, self.id, function, revision, routed, self._failed, time.time())

    def unavailable(self, function: str, revision: int, forwarded: bool, why: str) -> Reject:
        """The 503 of a request this node could not serve and did not forward (`why`: the pool's reason, for
        the log). It says it ran nothing (NO_INSTANCE_HEADER): a forwarder may try another peer."""
        log.info("%s revision %s: %s", function, revision, why)
        where = f"{function} revision {revision} has no instance on this node ({self.node}) to take it"
        tail = "a forwarded request is not forwarded again" if forwarded else "no live gateway has one"
        return Reject(
            503,
            f"Service Unavailable: {where}, and {tail}",
            "unavailable",
            headers={"Retry-After": "1", NO_INSTANCE_HEADER: self.node},
        )

    async def forward(
        self, request: Incoming, body: bytes, call: Call, peers: list[GatewayRow], timeout: float
    ) -> Reply:
        """The answer of the first of `peers` that takes the request (`_first_taker`)."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        headers = [(k, v) for k, v in headers if k.lower() not in _REPLACED]
        headers += [("X-Request-Id", call.request_id), (HOP_HEADER, self.id)]
        if call.source is not None:  # the client's address, signed by this gateway
            claim = client_claim(request.method, request.raw_path, call.source)
            headers += [(FORWARDED_FOR, call.source), *self.key.headers(self.id, call.request_id, claim, b"")]
        send = partial(self._send, method=request.method, raw_path=request.raw_path, headers=headers, body=body)
        return await self._first_taker(call.function, call.request_id, peers, timeout, send)

    async def invoke(
        self, function: str, payload: dict[str, Any], request_id: str, peers: list[GatewayRow], timeout: float
    ) -> PeerAnswer:
        """An invocation of this gateway's own (cron, onCommit, a manual trigger: `payload` says which, with
        its event and the revision picked here) run by the first of `peers` that takes it (`_first_taker`),
        signed with this gateway's key (PEER_PATH, fnctl.gateway.peerauth): its status, the outcome as the
        peer gave it (or None), the revision it ran, and a refusal's Retry-After."""
        path = f"{PEER_PATH}{function}"
        body = json.dumps(payload).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("X-Request-Id", request_id),
            (HOP_HEADER, self.id),
            *self.key.headers(self.id, request_id, path, body),
        ]
        send = partial(self._send, method="POST", raw_path=path, headers=headers, body=body)
        try:
            reply = await self._first_taker(function, request_id, peers, timeout, send)
        except Reject as reject:
            return PeerAnswer(reject.status, None, None, reject.headers.get("Retry-After"))
        retry_after = reply.headers.get("Retry-After")
        try:
            answer = json.loads(reply.body)
            status, outcome = int(answer["status"]), answer.get("outcome")
        except (ValueError, KeyError, TypeError):
            return PeerAnswer(reply.status if reply.status >= 400 else 502, None, None, retry_after)
        ran = answer.get("revision")
        # A peer that does not say which revision ran ran the one it was sent (it refuses any other).
        revision = ran if isinstance(ran, int) else payload.get("revision")
        return PeerAnswer(status, outcome, revision if outcome is not None else None, retry_after)

    async def _first_taker(
        self,
        function: str,
        request_id: str,
        peers: list[GatewayRow],
        timeout: float,
        send: Callable[[GatewayRow, float], Awaitable[Reply]],
    ) -> Reply:
        """The answer of the first of `peers` that took the request, within `timeout`. The next peer is tried
        only after one that provably ran nothing (unreachable; a 503 saying it has no instance, a 429 saying
        its admission refused it), each at most once: never run twice. Reject 502 when one failed during the
        request (it may have run it), 504 when one did not answer in time; after them all, the last overloaded
        peer's 429 (with its Retry-After), else 503."""
        deadline = time.monotonic() + timeout
        refused: Reply | None = None
        for peer in peers:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                reply = await send(peer, left)
            except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
                self._failed[peer.id] = time.monotonic()  # it never got the request: the next one may
                log.warning("request %s: gateway on %s unreachable: %s", request_id, peer.node, exc)
                continue
            except TimeoutError:
                raise Reject(
                    504, f"Gateway Timeout: the gateway on node {peer.node} did not answer in time", "timeout"
                ) from None
            except aiohttp.ClientError as exc:  # it may have run the invocation: not sent again
                self._failed[peer.id] = time.monotonic()
                raise Reject(
                    502, f"Bad Gateway: the gateway on node {peer.node} failed during the request ({exc})", "error"
                ) from None
            if reply.status == 503 and NO_INSTANCE_HEADER in reply.headers:
                continue  # it lost its instance since its last heartbeat, and ran nothing
            if reply.status == 429 and NOT_RUN_HEADER in reply.headers:
                self._failed[peer.id] = time.monotonic()  # overloaded: the next requests try the others first
                refused = sooner(refused, reply)
                continue
            self._count(function)
            return reply
        if refused is not None:  # every peer that had room to refuse said it was overloaded: the client's 429
            self._count(function)
            return refused
        raise Reject(
            503,
            f"Service Unavailable: {function} has no instance on this node ({self.node}), and no gateway "
            "that had one took it",
            "unavailable",
            headers={"Retry-After": "1"},
        )

    def _count(self, function: str) -> None:
        self.forwarded += 1
        if self._metrics is not None:
            self._metrics.forwarded[function] = self._metrics.forwarded.get(function, 0) + 1

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cookies kept, no proxy from the environment, the body relayed as the peer encoded it, the headers
            # as the client sent them (none added). Connections: no total cap, each peer's (docs/swarm.md).
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=self.max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
        return self._session

    async def _send(
        self, peer: GatewayRow, timeout: float, method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes
    ) -> Reply:
        session = self._client()
        url = URL(peer.address.rstrip("/") + raw_path, encoded=True)
        limits = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT)
        async with session.request(
            method, url, headers=CIMultiDict(headers), data=body, timeout=limits, allow_redirects=False
        ) as response:
            answer = await response.read()
            relayed = CIMultiDict((k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP)
            return Reply(response.status, relayed, answer)
