"""The gateway's lean request path: `POST /invoke/NAME` and the HTTP Trigger routes, parsed and answered by an
asyncio protocol with httptools (imported here and nowhere else) instead of aiohttp's request machinery.

aiohttp's objects, dispatch and streams cost more per request than the gateway's own work on it (the issue's
profile: ~27 % of the gateway's CPU; at c32 aiohttp serves 12.6k requests/s here, a Protocol with httptools
82-90k). So a connection starts on this protocol, on the same listening port, and stays on it while its
requests are plain: HTTP/1.1, the request line and headers whole and under the header limits, a body with a
Content-Length that has wholly arrived, a path with no percent-escapes, to /invoke/NAME or outside every
route aiohttp serves. Anything else (a partial or slow request, chunked bodies, Expect, Upgrade, bad HTTP,
oversized headers, the admin, views and dashboard endpoints, the data API but for a GET or POST of one
document, which the data API serves here through `LeanHost.data`) hands the connection, with the bytes read
so far, to aiohttp's protocol for the rest of its life: every defence against hostile clients (slow headers
and bodies, floods, limits, bad HTTP answered and audited) stays aiohttp's and the gateway's, unchanged.

Both paths run the same gateway methods (`Gateway.invoke`, `Gateway.trigger`): authentication, routing,
audit and metrics are one code. This module only frames requests and answers, as aiohttp would write them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools

from fnctl.gateway.request import LeanRequest, Reply

__all__ = ["LeanHost", "LeanProtocol", "parse", "encode"]

log = logging.getLogger("fnctl.gateway")
# The gateway's entry points: `Gateway.invoke` (with the function's name) and `Gateway.trigger`.
Invoke = Callable[[LeanRequest, str], Awaitable[Reply]]
Trigger = Callable[[LeanRequest], Awaitable[Reply]]
# The data API's (`DataApi.lean_route`): method and path → what serves them, or None (aiohttp's to serve).
DataRoute = Callable[[str, str], Trigger | None]
PIPELINE_LIMIT = 256 * 1024  # bytes buffered behind a request in progress before reading pauses
_EMPTY_STATUS = frozenset({204, 304, *range(100, 200)})  # answers that never carry a body


class LeanHost:
    """What the lean connections of one server share: the gateway's entry point, the limits that decide what
    stays lean, the hand-over to aiohttp, and the connections (for the idle sweep and a graceful stop)."""

    def __init__(
        self,
        *,
        invoke: Invoke,
        trigger: Trigger,
        admit: Callable[[asyncio.BaseTransport], str | None],
        release: Callable[[str], None],
        hand_off: Callable[[str | None], asyncio.Protocol],
        reserved: frozenset[str] | None,
        head_limit: int,
        idle_timeout: float,
        server: str,
        data: DataRoute | None = None,
    ) -> None:
        self.invoke, self.trigger, self.data = invoke, trigger, data
        self.admit, self.release, self.hand_off = admit, release, hand_off
        # First path segments of aiohttp's own routes (None: triggers cannot be told apart; all go to aiohttp)
        self.reserved = reserved
        self.head_limit = head_limit  # bytes of request line and headers; bigger heads are aiohttp's to refuse
        self.idle_timeout = idle_timeout  # aiohttp's keep-alive timeout: an idle connection is closed after it
        self.server = server
        self.connections: set[LeanProtocol] = set()
        self.closing = False
        self.served = 0  # requests answered here, and connections handed to aiohttp: for tests and benchmarks
        self.handed = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol(self) -> LeanProtocol:
        return LeanProtocol(self)

    def track(self, connection: LeanProtocol) -> None:
        self.connections.add(connection)
        if self._sweeper is None:
            self._schedule()

    def _schedule(self) -> None:
        # One timer for every connection (a timer per request would cost more than parsing it).
        period = min(max(self.idle_timeout / 4, 0.05), 1.0)
        self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for connection in list(self.connections):
            if connection.task is not None or now - connection.idle_since <= self.idle_timeout:
                continue
            # Cut by the second sweep that finds it idle past the timeout, not the first: the loop has polled
            # its socket in between, so a request that reached a gateway running late (a loaded machine) in
            # time is read, not cut unread, and the gateway's own lag is never taken for the client's.
            if connection.swept == connection.idle_since:
                connection.close()
            connection.swept = connection.idle_since
        if self.connections:
            self._schedule()

    def pre_shutdown(self) -> None:
        """Stop: idle connections close now, busy ones after their answer (which says `Connection: close`)."""
        self.closing = True
        for connection in list(self.connections):
            if connection.task is None:
                connection.close()

    async def shutdown(self, timeout: float) -> None:
        """Wait up to `timeout` for the requests in progress, then cut what is left."""
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for connection in list(self.connections):
            if connection.task is not None:
                connection.task.cancel()
            connection.close(abort=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class _Head:
    """httptools' callbacks for the request line and headers of each request of one connection, and the parser
    that calls them: one per connection, fed every request whole (head and body) in turn, because making a
    parser costs ~6 us, several times what parsing a request does."""

    __slots__ = ("url", "headers", "complete", "parser")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def parse(
    buffer: bytes, host: LeanHost, remote: str | None, head: _Head
) -> tuple[LeanRequest, str | Trigger | None, int] | None:
    """The request at the start of `buffer` when the lean path takes it: (request, function name for
    /invoke/NAME, the data API's entry for one of its routes, or None for a trigger route; bytes it spans);
    None when it belongs to aiohttp. `head` is the connection's parser, at the start of a request; after None
    it is mid-request, of no more use (the connection is aiohttp's from then on)."""
    end = buffer.find(b"\r\n\r\n", 0, host.head_limit) + 4
    if end < 4:
        return None  # not whole yet, or over the limit: aiohttp waits for the rest (or refuses it)
    parser = head.parser
    head.url, head.headers, head.complete = b"", [], False  # a new request (here, not in a parser callback)
    try:
        parser.feed_data(buffer[:end])  # the head only: the body is cut by its Content-Length below
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # bad HTTP, an upgrade: aiohttp's to answer
        return None
    if not head.complete or parser.get_http_version() != "1.1":
        return None
    target = head.url
    if not target.startswith(b"/") or target.startswith(b"//") or b"%" in target or b"#" in target:
        return None
    try:
        raw_path = target.decode("ascii")
    except UnicodeDecodeError:
        return None
    method = parser.get_method().decode("ascii")
    path = raw_path.partition("?")[0]
    function: str | Trigger | None = None
    if path.startswith("/invoke/"):
        function = path[8:]
        if method != "POST" or not function or "/" in function:
            return None
    elif path.startswith("/v1/") and host.data is not None:
        function = host.data(method, path)
        if function is None:
            return None
    elif host.reserved is None or method == "CONNECT" or path.split("/", 2)[1] in host.reserved:
        return None
    length = 0
    seen_length = False
    keep_alive = True  # HTTP/1.1's default; not the parser's word: a request without a body is over once its
    # head is parsed, and the parser forgets its `Connection: close` then
    for name, value in head.headers:
        lowered = name.lower()
        if lowered == b"content-length":
            if seen_length or not value.isdigit():
                return None
            seen_length, length = True, int(value)
        elif lowered in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        elif lowered == b"connection" and b"close" in [token.strip() for token in value.lower().split(b",")]:
            keep_alive = False
    if len(buffer) < end + length:
        return None  # the body is still coming: aiohttp reads it, under bodyTimeout
    if length:
        try:
            parser.feed_data(buffer[end : end + length])  # the parser is at the next request's start again
        except httptools.HttpParserError:
            return None
    request = LeanRequest(method, raw_path, tuple(head.headers), remote, buffer[end : end + length], keep_alive)
    return request, function, end + length


class LeanProtocol(asyncio.Protocol):
    """One client connection on the lean path: one request at a time (pipelined ones wait their turn, as
    in aiohttp), each in a task of its own (the gateway's deadlines are kept per task)."""

    __slots__ = (
        "host",
        "loop",
        "transport",
        "client",
        "remote",
        "buffer",
        "task",
        "idle_since",
        "swept",
        "paused",
        "head",
    )

    def __init__(self, host: LeanHost) -> None:
        self.host = host
        # Asked once here: each `asyncio.get_running_loop()` is a getpid() system call (CPython 3.11's fork check)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None  # the address counted against maxConnectionsPerClient ("" refused)
        self.remote: str | None = None
        self.buffer = b""
        self.task: asyncio.Task[None] | None = None
        self.idle_since = time.monotonic()
        self.swept = -1.0  # the idle_since a sweep last found past the idle timeout (`LeanHost._sweep`)
        self.paused = False
        self.head: _Head | None = None  # made with the first request (a refused connection needs none)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = self.host.admit(transport)
        if client == "":
            self.client = ""  # refused (answered and closed): nothing to set up or undo
            return
        # no isinstance check: uvloop's transports behave as asyncio.Transport without subclassing it
        self.transport, self.client = cast(asyncio.Transport, transport), client
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self.host.track(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client == "":
            return
        self.host.connections.discard(self)
        if self.client is not None:
            self.host.release(self.client)
            self.client = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        if self.task is None:
            self._next()
        elif len(self.buffer) > PIPELINE_LIMIT and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def close(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort() if abort else transport.close()

    def _next(self) -> None:
        """Start the request at the head of the buffer, or hand the connection to aiohttp."""
        if self.transport is None or self.client == "":
            return
        if self.host.closing:
            self.close()
            return
        head = self.head
        if head is None:
            head = self.head = _Head()
        parsed = parse(self.buffer, self.host, self.remote, head)
        if parsed is None:
            self._hand_off()
            return
        request, function, used = parsed
        self.buffer = self.buffer[used:]
        self.task = self.loop.create_task(self._serve(request, function))

    async def _serve(self, request: LeanRequest, function: str | Trigger | None) -> None:
        host = self.host
        try:
            if function is None:
                reply = await host.trigger(request)
            elif isinstance(function, str):
                reply = await host.invoke(request, function)
            else:
                reply = await function(request)
            host.served += 1
            close = reply.close or not request.keep_alive or host.closing
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(encode(reply, request.method, close, host.server))
                if close:
                    transport.close()
                    return
        except Exception as exc:  # noqa: BLE001 -- the gateway answers every failure itself; this is a bug: cut
            log.error(
                "lean request failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200] if exc.args else ""
            )
            self.close(abort=True)
            return
        finally:
            self.task = None
            self.idle_since = time.monotonic()
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        if self.buffer:
            self._next()

    def _hand_off(self) -> None:
        """The rest of this connection is aiohttp's: its protocol takes the transport and the bytes read."""
        transport, buffer, client = self.transport, self.buffer, self.client
        assert transport is not None
        self.host.connections.discard(self)
        self.host.handed += 1
        self.client, self.transport, self.buffer = "", None, b""  # nothing of it is this protocol's any more
        handler = self.host.hand_off(client)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.paused:
            transport.resume_reading()
        if buffer:
            handler.data_received(buffer)


# ---- answers, written as aiohttp writes them --------------------------------------------------------


def _status_line(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n"


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}
_stamp: tuple[int, str, str] = (0, "", "")  # (second, server, their Date and Server lines)


def _stamped(server: str) -> str:
    """The Date and Server lines, made once a second (not per answer)."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second or _stamp[1] != server:
        _stamp = (second, server, f"Date: {formatdate(second, usegmt=True)}\r\nServer: {server}\r\n")
    return _stamp[2]


def encode(reply: Reply, method: str, close: bool, server: str) -> bytes:
    """The answer's bytes: aiohttp's rules for Content-Length, Content-Type, Date, Server and Connection."""
    status, headers, body = reply.status, reply.headers, reply.body
    empty = status in _EMPTY_STATUS or method == "HEAD"
    head = [_STATUS_LINES.get(status) or _status_line(status)]
    head += [f"{name}: {value}\r\n" for name, value in headers.items()]
    if status not in _EMPTY_STATUS and (body or method != "HEAD"):
        head.append(f"Content-Length: {len(body)}\r\n")
    if not empty and body and "Content-Type" not in headers:
        head.append("Content-Type: application/octet-stream\r\n")
    dated, named = "Date" in headers, "Server" in headers
    if not (dated or named):  # the usual answer: both lines at once
        head.append(_stamped(server))
    else:
        if not dated:
            head.append(f"Date: {formatdate(int(time.time()), usegmt=True)}\r\n")  # rare: a handler's Server
        if not named:
            head.append(f"Server: {server}\r\n")
    if close and "Connection" not in headers:
        head.append("Connection: close\r\n")
    head.append("\r\n")
    encoded = "".join(head).encode("utf-8")
    return encoded if empty or not body else encoded + body
