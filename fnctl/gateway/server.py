"""The gateway's HTTP server: aiohttp's, with a cap on connections per client address, a one-line audited
answer to what is not valid HTTP, and no tracebacks in the log; `start_server` listens with the gateway's
limits (read timeouts against slowloris, header sizes, the drain on shutdown). Connections start on the lean
path (`fnctl.gateway.lean`), which serves plain invocations and trigger requests itself and hands everything
else, connection and bytes read, to aiohttp's protocol here: one listening port for both."""

from __future__ import annotations

import asyncio
import logging
import sys
from http import HTTPStatus
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_request import BaseRequest

from fnctl.errors import BadInput
from fnctl.gateway.app import GATEWAY, Gateway, GatewayLimits
from fnctl.gateway.lean import LeanHost

log = logging.getLogger("fnctl.gateway")


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, with three changes:

    - at most `maxConnectionsPerClient` open connections per client address: one more is answered 429 and
      closed at once, before anything of it is read (a flood of slow connections from one address cannot
      take every file descriptor or every event-loop turn);
    - a request aiohttp refuses before the gateway sees it (malformed request line, headers or chunked
      framing) is answered with a one-line reason and audited, like every other request; oversized
      headers are a 431 (an oversized request line a 414), never an echo of the offending bytes;
    - nothing is logged with a traceback: one line, the exception's type and message.
    """

    __slots__ = ("_client", "_adopted")

    def __init__(self, manager: web.Server, *, adopted: tuple[str | None] | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._adopted = adopted  # handed over by the lean path: (the address it counted, or None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        if self._adopted is not None:  # handed over by the lean protocol, which counted it already
            self._client = self._adopted[0]
        else:
            self._client = server.admit(transport) if isinstance(server, _Server) else None
            if self._client == "":
                return  # refused: never set up, so connection_lost has nothing to undo
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client == "":
            return
        server = self._manager
        if self._client is not None and isinstance(server, _Server):
            server.release(self._client)
            self._client = None
        super().connection_lost(exc)

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status == 400 and isinstance(exc, BadHttpMessage):
            too_many = "Too many headers" in str(exc)
            if too_many or isinstance(exc, LineTooLong):
                status = 431 if too_many or exc.args[1:2] == (self.max_field_size,) else 414
        if request.writer.output_size > 0:  # a response is under way: the connection can only be cut
            self.log_exception("request failed after its response started", exc_info=exc)
            raise ConnectionError("response already started")
        # The parser's own message may quote the client's bytes: the reason names the kind of error only.
        kind = type(exc).__name__ if exc is not None else "error"
        reason = (
            f"{status} {HTTPStatus(status).phrase}: "
            + ("the request is not valid HTTP" if status < 500 else "internal error")
            + f" ({kind})"
        )
        if status >= 500:
            self.log_exception("request failed", exc_info=exc)
        server = self._manager
        if isinstance(server, _Server) and server.gateway is not None:
            server.gateway.refused(request, status, "rejected" if status < 500 else "internal")
        response = web.Response(status=status, text=reason + "\n")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """One line per failure (aiohttp would add the traceback: a client could fill the log with them)."""
        exc = kw.get("exc_info")
        if not isinstance(exc, BaseException):
            exc = sys.exc_info()[1]
        message = (str(args[0]) % args[1:]) if args else "error"
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}" if exc else ""
        self.logger.warning("%s: %s", message, detail)


_REFUSAL = b"429 Too Many Requests: too many connections from your address\n"
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL)
)


class ClientConnections:
    """Open connections per client address, capped (`maxConnectionsPerClient`). Decided purely: the
    protocol asks before it sets a connection up and tells when one is gone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self.open.get(address, 0)
        if count >= self.limit:
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)


class _Server(web.Server):
    # Set by GatewayRunner once the server is made (aiohttp builds it; there is no hook for extra state).
    per_client: ClientConnections | None = None
    gateway: Gateway | None = None
    lean: LeanHost | None = None

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]  # asyncio takes any protocol
        return self.lean.protocol() if self.lean is not None else self.handler(None)

    def handler(self, adopted: tuple[str | None] | None) -> _RequestHandler:
        return _RequestHandler(self, loop=self._loop, adopted=adopted, **self._kwargs)

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """Count a new connection against its address's cap: its address, None when no cap applies, or ""
        when refused (then answered 429 and closed here)."""
        peer = transport.get_extra_info("peername")
        if self.per_client is None or not isinstance(peer, tuple) or not peer:
            return None
        address = str(peer[0])
        if self.per_client.admit(address):
            return address
        log.debug("connection from %s refused: too many from that address", address)
        write = getattr(transport, "write", None)  # uvloop's transports do not subclass asyncio's
        if write is not None:
            write(_TOO_MANY_CONNECTIONS)
        transport.close()
        return ""

    def release(self, address: str) -> None:
        if self.per_client is not None:
            self.per_client.release(address)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        if self.lean is not None:
            self.lean.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        if self.lean is None:
            await super().shutdown(timeout)
            return
        await asyncio.gather(super().shutdown(timeout), self.lean.shutdown(30.0 if timeout is None else timeout))


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections use `_RequestHandler` (aiohttp has no public hook for the handler class)."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections_per_client: int = 0,
        lean: GatewayLimits | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._per_client = max_connections_per_client
        self._lean = lean

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.per_client = ClientConnections(self._per_client) if self._per_client > 0 else None
        server.gateway = gateway = self.app.get(GATEWAY)
        limits = self._lean
        if gateway is not None and limits is not None:
            server.lean = LeanHost(
                invoke=gateway.invoke,
                trigger=gateway.trigger,
                admit=server.admit,
                release=server.release,
                hand_off=lambda client: server.handler((client,)),
                reserved=_reserved(self.app),
                head_limit=min(limits.max_header, _LINE_LIMIT),
                idle_timeout=limits.read_timeout,
                server=SERVER_SOFTWARE,
                data=gateway.lean_data,
            )
        return server


_LINE_LIMIT = 8190  # aiohttp's limit on the request line


def _reserved(app: web.Application) -> frozenset[str] | None:
    """The first path segments of the application's own routes (but the trigger catch-all): requests there
    are aiohttp's. None when a route's first segment is a pattern (no trigger can then be told apart)."""
    first: set[str] = set()
    for resource in app.router.resources():
        canonical = resource.canonical
        if canonical == "/{tail}":  # the catch-all: the HTTP Triggers, which the lean path serves
            continue
        segment = canonical.split("/", 2)[1] if canonical.startswith("/") else "{"
        if "{" in segment:
            return None
        first.add(segment)
    return frozenset(first)


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    limits: GatewayLimits,
    *,
    lean: bool = True,
    reuse_port: bool = False,
) -> tuple[GatewayRunner, int]:
    """Listen on host:port (0: any free port); returns the runner (for `cleanup()`) and the bound port.

    Idle keep-alive connections and clients slow to send their request line and headers (slowloris) are both
    cut after `read_timeout`: aiohttp's keep-alive timer runs from the connection's start until a whole
    request is in, however slowly its bytes trickle. The body has its own deadline (`body_timeout`, in the
    gateway), and each client address at most `max_connections_per_client` connections. `lean`: connections
    start on the lean path (False: aiohttp's alone, the baseline the tests compare it with). `reuse_port`: share
    the port with the other worker processes of `fnctl serve --workers` (SO_REUSEPORT: the kernel spreads the
    connections between them).
    """
    line_limit = _LINE_LIMIT if limits.max_header != _LINE_LIMIT else _LINE_LIMIT + 1  # 414 and 431 told apart
    runner = GatewayRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=limits.read_timeout,
        max_field_size=limits.max_header,
        max_line_size=line_limit,
        lingering_time=min(10.0, limits.read_timeout),
        shutdown_timeout=limits.drain_timeout,
        max_connections_per_client=limits.max_connections_per_client,
        lean=limits if lean else None,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:  # the port is taken, or the address is not this machine's: the user's to fix
        await runner.cleanup()
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return runner, site.port
