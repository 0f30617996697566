"""The gateway's lean request path (`fnctl.gateway.lean`) on a real server bound to 127.0.0.1: what it
answers is what aiohttp's path answers, byte for byte but the Date; what it does not take (partial, odd or
admin requests) is handed, with its connection, to aiohttp; its connections are capped, kept alive, closed
when idle and drained like aiohttp's. The rest of the gateway's tests run on it too (start_server's default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from multidict import CIMultiDict
from polling import eventually

from fnctl.gateway import router
from fnctl.gateway.app import Gateway, GatewayLimits, make_app
from fnctl.gateway.audit import AuditLog
from fnctl.gateway.auth import Authenticator, Principal, PrincipalKind, Unauthenticated
from fnctl.gateway.lean import LeanHost, encode
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.pools import PoolManager
from fnctl.gateway.request import Reply
from fnctl.gateway.server import start_server
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.protocol import EncodedJson


@dataclass(frozen=True)
class _Result:
    outcome: Outcome
    cold_start: bool = False


@dataclass
class _Pool:
    """{"echo": x} → x; {"fail": kind} fails; {"wait": true} waits for `release`; a trigger's event: its
    method, path, query and the headers the function sees (no time, so both paths answer the same)."""

    calls: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def invoke(
        self, function: str, revision: int, event: Any, *, caller: dict[str, Any] | None, request_id: str
    ) -> _Result:
        self.calls += 1
        if isinstance(event, EncodedJson):  # a trigger's event, as text: the runtime decodes it
            event = json.loads(event.text)
        if isinstance(event, dict) and "httpMethod" in event:
            seen = {k: event[k] for k in ("httpMethod", "path", "pathParameters", "queryStringParameters", "body")}
            seen["headers"] = {k: v for k, v in event["headers"].items() if k.startswith("x-")}
            answer = {"statusCode": 201, "headers": {"X-Seen": "1"}, "body": json.dumps(seen)}
            return _Result(Outcome(True, answer, None, "", "", "", 1.0))
        command = event if isinstance(event, dict) else {}
        if command.get("wait"):
            await self.release.wait()
        if "fail" in command:
            return _Result(Outcome(False, None, Failure(command["fail"]), "it failed", "Traceback: x", "log\n", 1.0))
        return _Result(Outcome(True, command.get("echo", {"revision": revision}), None, "", "", "", 1.0))

    async def reconcile(self, routes: dict[str, dict[int, int]]) -> None:
        pass

    def stats(self) -> dict[tuple[str, int], Any]:
        return {}


class _Auth:
    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        value = headers.get("Authorization")
        if value is None:
            return Principal("anonymous", (), None, PrincipalKind.ANONYMOUS)
        if value != "Bearer admin":
            raise Unauthenticated("bad key")
        return Principal("root", ("admin",), "acme", PrincipalKind.KEY)


class _Audit:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(self, **row: Any) -> None:
        self.rows.append(row)


def _table() -> router.Table:
    spec = {"limits": {"timeout": 5.0, "payload": 1000}, "rollout": {"strategy": "immediate"}}
    return router.build_table(
        {"pub": {1: 100}, "priv": {1: 100}},
        {("pub", 1): {**spec, "access": {"roles": ["public"]}}, ("priv", 1): {**spec, "access": {"roles": ["admin"]}}},
        {"hi": {"function": "pub", "http": {"path": "/hello/{name}", "methods": ["GET", "POST", "HEAD"]}}},
        {},
    )


@dataclass
class _Server:
    port: int
    pool: _Pool
    audit: _Audit
    lean: LeanHost | None


@asynccontextmanager
async def _serving(lean: bool, **limits: Any) -> AsyncIterator[_Server]:
    settings = GatewayLimits(**{"read_timeout": 0.5, "max_header": 2048, "reload_interval": 0.02, **limits})
    pool, audit = _Pool(), _Audit()
    gateway = Gateway(
        pool=cast(PoolManager, pool),
        authenticator=cast(Authenticator, _Auth()),
        metrics=Metrics(),
        audit=cast(AuditLog, audit),
        source=_table,
        limits=settings,
    )
    gateway.pool_ready = True
    runner, port = await start_server(make_app(gateway), "127.0.0.1", 0, settings, lean=lean)
    try:
        for _ in range(500):  # the routing table is read in the background
            if gateway.table is not None:
                break
            await asyncio.sleep(0.01)
        server: Any = runner.server
        yield _Server(port, pool, audit, server.lean)
    finally:
        await runner.cleanup()


async def _read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (b"" if head_only else await reader.readexactly(length))


async def _exchange(port: int, raw: bytes, answers: int = 1, head_only: bool = False) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return [await asyncio.wait_for(_read_answer(reader, head_only), 5) for _ in range(answers)]
    finally:
        writer.close()


def _normal(answer: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Status line, sorted headers without Date, body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, sorted(line for line in lines if not line.lower().startswith(b"date:")), body


def _post(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: rid\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _get(path: str, *headers: str, method: str = "GET") -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: rid\r\n{extra}\r\n".encode()


# Requests the lean path serves itself: every outcome of the pipeline it can give.
LEAN_REQUESTS = [
    _post("/invoke/pub", b'{"echo": {"a": [1, "\xc3\xa9"]}}'),
    _post("/invoke/pub", b""),
    _post("/invoke/pub", b'{"fail": "handler error"}', "X-Fnctl-Log: tail"),
    _post("/invoke/pub", b'{"fail": "timeout"}'),
    _post("/invoke/pub", b"{not json"),
    _post("/invoke/nope", b"{}"),
    _post("/invoke/priv", b"{}"),
    _post("/invoke/priv", b"{}", "Authorization: Bearer wrong"),
    _post("/invoke/priv", b'{"echo": 1}', "Authorization: Bearer admin"),
    _post("/invoke/pub", b"{}", "X-Fnctl-Revision: x1"),
    _post("/invoke/pub", b"{}", "X-Fnctl-Revision: 7", "Authorization: Bearer admin"),
    _post("/invoke/pub", b"x" * 1500),
    _post("/invoke/pub", b'{"echo": 2}', "Connection: close"),
    _post("/hello/ada?q=1&q=2&r=a+b&e", b"hi there", "X-Custom: v", "Authorization: Bearer admin"),
    _get("/hello/ada"),
    _get("/hello/ada", "Connection: keep-alive, close"),  # no body: the head alone says to close
    _get("/hello/ada", method="HEAD"),
    _get("/hello/ada", method="DELETE"),
    _get("/hello/ada/more"),
    _get("/nowhere"),
]
# Requests the lean path hands to aiohttp (with their connection).
HANDED_REQUESTS = [
    _get("/healthz"),
    _get("/metrics", method="POST"),
    _get("/invoke"),
    _get("/invoke/pub"),
    _post("/invoke/p%75b", b"{}"),
    b"POST /invoke/pub HTTP/1.0\r\nX-Request-Id: rid\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /invoke/pub HTTP/1.1\r\nX-Request-Id: rid\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST /invoke/pub HTTP/1.1\r\nX-Request-Id: rid\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /hello/a HTTP/1.1\r\nX-Request-Id: rid\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\n",
    b"GET /hello/a HTTP/1.1\r\nBad Header\r\n\r\n",
]


def test_lean_answers_exactly_as_aiohttp_does() -> None:
    """Each request, on a fresh connection, to a server with the lean path and to one without: the same
    status line, headers (but Date) and body; and the lean path served the plain ones, handed the others."""

    async def answers(lean: bool) -> tuple[list[Any], _Server]:
        async with _serving(lean) as server:
            got = []
            for raw in LEAN_REQUESTS + HANDED_REQUESTS:
                got.append(_normal((await _exchange(server.port, raw, head_only=raw.startswith(b"HEAD")))[0]))
            return got, server

    async def main() -> None:
        with_lean, lean = await answers(True)
        without, plain = await answers(False)
        for raw, a, b in zip(LEAN_REQUESTS + HANDED_REQUESTS, with_lean, without, strict=True):
            assert a == b, raw
        assert plain.lean is None and lean.lean is not None
        assert (lean.lean.served, lean.lean.handed) == (len(LEAN_REQUESTS), len(HANDED_REQUESTS))
        # the same audit, but for durations and generated request ids
        strip = ("duration_ms", "request_id")
        assert [{k: v for k, v in r.items() if k not in strip} for r in lean.audit.rows] == [
            {k: v for k, v in r.items() if k not in strip} for r in plain.audit.rows
        ]
        statuses = {int(s.split(b" ")[1]) for s, _, _ in with_lean}
        assert {200, 201, 400, 401, 404, 405, 413, 431, 500, 504} <= statuses

    asyncio.run(asyncio.wait_for(main(), 60))


def test_one_connection_moves_to_aiohttp_and_keeps_its_order() -> None:
    """Pipelined requests in one write are answered in order; a request the lean path does not take hands
    the connection over mid-way, and the requests after it are answered by aiohttp; the per-client count
    is released once when the connection closes."""

    async def main() -> None:
        async with _serving(True, max_connections_per_client=3) as server:
            raw = _post("/invoke/pub", b'{"echo": 1}') + _get("/healthz") + _post("/invoke/pub", b'{"echo": 3}')
            first, second, third = await _exchange(server.port, raw, answers=3)
            assert first.endswith(b"\r\n\r\n1") and b" 200 " in first
            assert b'"status": "ok"' in second
            assert third.endswith(b"\r\n\r\n3")
            assert server.lean is not None and (server.lean.served, server.lean.handed) == (1, 1)
            for _ in range(300):
                if not server.lean.connections:
                    break
                await asyncio.sleep(0.01)
            # the cap counts what is open: three at once are admitted after the first one closed
            held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
            reader, writer = held[0]
            writer.write(_post("/invoke/pub", b'{"echo": 4}'))
            assert (await asyncio.wait_for(_read_answer(reader), 5)).endswith(b"\r\n\r\n4")
            refused = await _exchange(server.port, b"", answers=1)
            assert refused[0].startswith(b"HTTP/1.1 429 ")
            for _, w in held:
                w.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_pipelined_lean_requests_on_one_connection_are_each_parsed_whole() -> None:
    """Requests with and without bodies in one write, then more on the same connection: each answered by the
    lean path, in order, with its own body and headers; a bodyless one saying `Connection: close` is the last
    answered, and the connection closes after it."""

    async def main() -> None:
        async with _serving(True) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                _post("/invoke/pub", b'{"echo": "one"}')
                + _get("/hello/ada?q=2", "X-Two: 2")
                + _post("/invoke/pub", b"")
                + _post("/hello/bob", b"four", "X-Four: 4")
            )
            answers = [await asyncio.wait_for(_read_answer(reader), 5) for _ in range(4)]
            writer.write(_get("/hello/cy", "Connection: close") + _post("/invoke/pub", b'{"echo": "never"}'))
            last = await asyncio.wait_for(_read_answer(reader), 5)
            rest = await asyncio.wait_for(reader.read(), 5)  # b"" once the gateway closed the connection
            writer.close()
            assert answers[0].endswith(b'\r\n\r\n"one"') and b" 200 " in answers[0]
            two = json.loads(answers[1].partition(b"\r\n\r\n")[2])
            assert (two["path"], two["queryStringParameters"], two["body"]) == ("/hello/ada", {"q": "2"}, None)
            assert two["headers"]["x-two"] == "2"
            assert answers[2].endswith(b'\r\n\r\n{"revision":1}')
            four = json.loads(answers[3].partition(b"\r\n\r\n")[2])
            assert (four["httpMethod"], four["path"], four["body"]) == ("POST", "/hello/bob", "four")
            assert four["headers"]["x-four"] == "4" and "x-two" not in four["headers"]
            assert b"\r\nConnection: close\r\n" in last and b'"/hello/cy"' in last
            assert rest == b""
            assert server.lean is not None and (server.lean.served, server.lean.handed) == (5, 0)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_idle_lean_connections_are_closed_after_the_read_timeout() -> None:
    async def main() -> None:
        async with _serving(True, read_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(_post("/invoke/pub", b'{"echo": 1}'))
            assert (await asyncio.wait_for(_read_answer(reader), 5)).endswith(b"\r\n\r\n1")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, idle
            assert server.lean is not None and server.lean.handed == 0
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_gateway_running_late_reads_a_new_request_before_it_counts_the_connection_idle() -> None:
    """A loaded machine: every turn of the gateway's loop takes longer than its read timeout. A client
    connects and sends its request at once; before, the idle sweep that ran in the turn the connection was
    set up found it "idle" past the timeout (by the gateway's own lag) and cut it before its request was
    ever read: the client saw its connection reset. Now it is answered."""

    def client(port: int) -> bytes:  # outside the gateway's loop, as a real client is
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_post("/invoke/pub", b'{"echo": 1}', "Connection: close"))
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            return answer

    async def main() -> None:
        async with _serving(True, read_timeout=0.2) as server:
            # a request in progress on another connection: the idle sweep runs, as it does on a busy gateway
            waiting = asyncio.create_task(_exchange(server.port, _post("/invoke/pub", b'{"wait": true}')))
            await eventually(lambda: server.pool.calls == 1, "the other request to be in progress", timeout=10)
            loop = asyncio.get_running_loop()
            late = True

            def lag() -> None:  # the gateway's share of a busy machine: 0.25 s per turn of its loop
                time.sleep(0.25)
                if late:  # a timer, as the sweep is: every turn runs this, then the sweep, both due
                    loop.call_later(0, lag)

            loop.call_later(0, lag)
            try:
                answer = await asyncio.to_thread(client, server.port)
            finally:
                late = False
                server.pool.release.set()
            assert (await waiting)[0].startswith(b"HTTP/1.1 200 ")
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n1"), answer

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_stop_answers_lean_requests_in_flight_then_closes() -> None:
    async def main() -> None:
        settings = GatewayLimits(reload_interval=0.02, drain_timeout=10)
        pool = _Pool()
        gateway = Gateway(
            pool=cast(PoolManager, pool),
            authenticator=cast(Authenticator, _Auth()),
            metrics=Metrics(),
            audit=cast(AuditLog, _Audit()),
            source=_table,
            limits=settings,
        )
        runner, port = await start_server(make_app(gateway), "127.0.0.1", 0, settings)
        for _ in range(500):
            if gateway.table is not None:
                break
            await asyncio.sleep(0.01)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        inflight = asyncio.create_task(_exchange(port, _post("/invoke/pub", b'{"wait": true}')))
        for _ in range(500):
            if pool.calls:
                break
            await asyncio.sleep(0.01)
        closing = asyncio.create_task(runner.cleanup())
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # an idle connection goes at once
        pool.release.set()
        answer = (await inflight)[0]
        assert b" 200 " in answer and b"Connection: close" in answer
        await closing
        idle_writer.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_reply_with_a_plain_dict_of_the_gateways_headers_is_written_as_with_a_multidict() -> None:
    """The usual answers carry their (gateway-named) headers in a dict: the bytes are the CIMultiDict's."""
    own = {"Content-Type": "application/json", "X-Request-Id": "rid", "X-Fnctl-Revision": "2"}
    for status, body in ((200, b'{"ok":true}'), (200, b""), (204, b"")):
        for method, close in (("GET", False), ("HEAD", False), ("POST", True)):
            plain = encode(Reply(status, dict(own), body), method, close, "fnctl")
            multi = encode(Reply(status, CIMultiDict(own), body), method, close, "fnctl")
            assert _undated(plain) == _undated(multi) and b"\r\nDate: " in plain


def _undated(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n") if not line.startswith(b"Date: "))
