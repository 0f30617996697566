"""`fnctl serve`: the gateway process. Wires the store, the instance pools, authentication, metrics, the audit
and cron to the gateway's HTTP app, listens, and on SIGTERM/SIGINT stops accepting, drains the requests in
flight, and closes everything in order. Uses uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_request import BaseRequest

from fnctl.data.documents import DataPlane
from fnctl.errors import BadInput
from fnctl.gateway.app import GATEWAY, Gateway, GatewayLimits, make_app
from fnctl.gateway.broker import Broker, LivePolicies, StateAudit
from fnctl.gateway.table import StoreTable
from fnctl.manifest.project import CONFIG_FILE, Project, read_config
from fnctl.manifest.units import parse_duration, parse_size
from fnctl.state import docstore
from fnctl.state.store import connect

log = logging.getLogger("fnctl.serve")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    idle_seconds: float = 300.0  # an instance above minInstances idle this long is stopped
    queue_limit: int = 64  # requests waiting per revision once every instance is busy at maxInstances
    access_log: bool = True


def parse_address(text: str) -> tuple[str, int]:
    """host:port (IPv6 as [::1]:8080); a bare port means 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"invalid address {text!r}: use host:port, e.g. 127.0.0.1:8080")
    return host, int(port)


def options_for(project: Project, *, address: str | None = None, read_timeout: float | None = None,
                max_body: str | None = None, max_header: str | None = None, idle_timeout: str | None = None,
                access_log: bool = True, body_timeout: float | None = None,
                max_connections_per_client: int | None = None) -> ServeOptions:
    """The options of `fnctl serve`: fnctl.toml's [gateway] section, overridden by the command line's."""
    limits, idle = project_limits(project)
    try:
        if read_timeout is not None:
            limits = replace(limits, read_timeout=_positive(read_timeout, "--read-timeout"))
        if body_timeout is not None:
            limits = replace(limits, body_timeout=_positive(body_timeout, "--body-timeout"))
        if max_connections_per_client is not None:
            limits = replace(limits, max_connections_per_client=int(_positive(max_connections_per_client,
                                                                              "--max-connections-per-client")))
        if max_body is not None:
            limits = replace(limits, max_body=parse_size(max_body))
        if max_header is not None:
            limits = replace(limits, max_header=parse_size(max_header))
        if idle_timeout is not None:
            idle = parse_duration(idle_timeout)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    host, port = parse_address(address or project.gateway)
    options = ServeOptions(host=host, port=port, limits=limits, access_log=access_log)
    return options if idle is None else replace(options, idle_seconds=idle)


def _positive(value: float, what: str) -> float:
    if not value > 0:  # NaN too
        raise ValueError(f"{what} must be more than 0, not {value}")
    return value


_SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    # fnctl.toml [gateway] key → (GatewayLimits field, parser)
    "maxBodySize": ("max_body", parse_size), "maxHeaderSize": ("max_header", parse_size),
    "readTimeout": ("read_timeout", parse_duration), "timeoutMargin": ("timeout_margin", parse_duration),
    "maxConcurrentPerFunction": ("max_concurrent", int), "drainTimeout": ("drain_timeout", parse_duration),
    "bodyTimeout": ("body_timeout", parse_duration), "maxConnectionsPerClient": ("max_connections_per_client", int),
}


def project_limits(project: Project) -> tuple[GatewayLimits, float | None]:
    """The gateway limits of fnctl.toml's [gateway] section, and its instance idle time (None: default)."""
    if not project.has_config:
        return GatewayLimits(), None
    section = read_config(project.root / CONFIG_FILE).get("gateway", {})
    values: dict[str, Any] = {}
    try:
        for key, (name, parse) in _SETTINGS.items():
            if key in section:
                values[name] = parse(section[key])
        idle = parse_duration(section["idleTimeout"]) if "idleTimeout" in section else None
    except ValueError as exc:
        raise BadInput(f"{project.root / CONFIG_FILE}: gateway: {exc}") from None
    return GatewayLimits(**values), idle


# ---- the HTTP server ------------------------------------------------------------------------------


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

    __slots__ = ("_client",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client: str | None = None
        server = self._manager
        peer = transport.get_extra_info("peername")
        if isinstance(server, _Server) and server.per_client is not None and isinstance(peer, tuple) and peer:
            address = str(peer[0])
            if not server.per_client.admit(address):
                self._client = ""  # refused: never set up, so connection_lost has nothing to undo
                self.logger.debug("connection from %s refused: too many from that address", address)
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(_TOO_MANY_CONNECTIONS)
                transport.close()
                return
            self._client = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client == "":
            return
        server = self._manager
        if self._client is not None and isinstance(server, _Server) and server.per_client is not None:
            server.per_client.release(self._client)
            self._client = None
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 400 and isinstance(exc, BadHttpMessage):
            too_many = "Too many headers" in str(exc)
            if too_many or isinstance(exc, LineTooLong):
                status = 431 if too_many or exc.args[1:2] == (self.max_field_size,) else 414
        if request.writer.output_size > 0:  # a response is under way: the connection can only be cut
            self.log_exception("request failed after its response started", exc_info=exc)
            raise ConnectionError("response already started")
        # The parser's own message may quote the client's bytes: the reason names the kind of error only.
        kind = type(exc).__name__ if exc is not None else "error"
        reason = f"{status} {HTTPStatus(status).phrase}: " + (
            "the request is not valid HTTP" if status < 500 else "internal error") + f" ({kind})"
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
_TOO_MANY_CONNECTIONS = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL))


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

    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections use `_RequestHandler` (aiohttp has no public hook for the handler class)."""

    def __init__(self, app: web.Application, *, max_connections_per_client: int = 0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._per_client = max_connections_per_client

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.per_client = ClientConnections(self._per_client) if self._per_client > 0 else None
        server.gateway = self.app.get(GATEWAY)
        return server


async def start_server(app: web.Application, host: str, port: int, limits: GatewayLimits) -> tuple[GatewayRunner, int]:
    """Listen on host:port (0: any free port); returns the runner (for `cleanup()`) and the bound port.

    Idle keep-alive connections and clients slow to send their request line and headers (slowloris) are both
    cut after `read_timeout`: aiohttp's keep-alive timer runs from the connection's start until a whole
    request is in, however slowly its bytes trickle. The body has its own deadline (`body_timeout`, in the
    gateway), and each client address at most `max_connections_per_client` connections.
    """
    line_limit = 8190 if limits.max_header != 8190 else 8191  # distinct, so 414 and 431 can be told apart
    runner = GatewayRunner(app, handle_signals=False, access_log=None, keepalive_timeout=limits.read_timeout,
                           max_field_size=limits.max_header, max_line_size=line_limit,
                           lingering_time=min(10.0, limits.read_timeout), shutdown_timeout=limits.drain_timeout,
                           max_connections_per_client=limits.max_connections_per_client)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    return runner, site.port


# ---- the process ----------------------------------------------------------------------------------


def serve(project: Project, store_path: Path, options: ServeOptions) -> bool:
    """Run the gateway until SIGTERM or SIGINT; False when a second signal cut the drain short."""
    _configure_logging()
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(_serve(project, store_path, options))
        except asyncio.CancelledError:
            _event("stopped", drained=False)
            return False
    _event("stopped", drained=True)
    return True


def _gateway(project: Project, store_path: Path, options: ServeOptions) -> Gateway:
    """The gateway and the parts it uses (authentication, audit, metrics, table, pools), not started yet."""
    from fnctl.gateway.audit import AuditLog
    from fnctl.gateway.auth import AuthConfig, Authenticator
    from fnctl.gateway.metrics import Metrics
    from fnctl.gateway.pools import PoolManager

    store = connect(store_path)
    identity = {"project": project.name, "store": store.id}
    store.close()
    pool = PoolManager(project, store_path, idle_seconds=options.idle_seconds, queue_limit=options.queue_limit)
    gateway = Gateway(pool=pool, authenticator=Authenticator(store_path, AuthConfig.from_project(project)),
                      metrics=Metrics(), audit=AuditLog(store_path), source=StoreTable(store_path),
                      limits=options.limits, identity=identity)
    gateway.broker = data_broker(store_path, gateway)
    pool.call_handler = gateway.broker.handler_for
    return gateway


def data_broker(store_path: Path, gateway: Gateway) -> Broker:
    """The data plane the gateway serves (REST under /v1/, the instances' `context.db` calls): the data file
    beside the state store, the collections `apply` put there, and the live Policies of the routing table."""
    plane = DataPlane(docstore.connect(docstore.data_path(store_path)),
                      LivePolicies(lambda: None if gateway.table is None else gateway.table.policies),
                      StateAudit(store_path))
    return Broker(plane)


async def _serve(project: Project, store_path: Path, options: ServeOptions) -> None:
    from fnctl.gateway.audit import start_access_log
    from fnctl.gateway.cron import CronRunner

    stop = _stop_on_signals()
    gateway = _gateway(project, store_path, options)
    stop_access = start_access_log(sys.stdout) if options.access_log else None
    flushing, cron_stop = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    drained = False
    try:
        await gateway.pool.start()
        runner, port = await start_server(make_app(gateway), options.host, options.port, options.limits)
        gateway.pool_ready = True
        cron = CronRunner(store_path, lambda name, function, event: gateway.invoke_internal(function, event, trigger=name))
        tasks += [asyncio.create_task(gateway.metrics.run_flusher(store_path, flushing)),
                  asyncio.create_task(cron.run(cron_stop)),
                  asyncio.create_task(_drive_rollouts(project, store_path, cron_stop))]
        _event("listening", address=f"{options.host}:{port}", project=project.name, store=str(store_path))
        await stop.wait()
        _event("draining", inflight=gateway.inflight)
        gateway.draining = True
        cron_stop.set()
        await runner.cleanup()  # stop listening, close idle connections, wait for requests in flight
        drained = True
    finally:  # after a forced stop too (a second signal): close down, but wait for nothing long
        cron_stop.set()
        flushing.set()  # the flusher writes what is left, then returns
        await gateway.pool.close(timeout=options.limits.drain_timeout if drained else 1.0)
        if tasks:
            await asyncio.wait(tasks, timeout=None if drained else 1.0)
        await _close(gateway)
        if stop_access is not None:
            stop_access()


ROLLOUT_TICK = 0.5  # seconds between the controller loop's looks at the rollouts


async def _drive_rollouts(project: Project, store_path: Path, stop: asyncio.Event) -> None:
    """The controller loop: rollouts advance while the gateway runs, whenever no other fnctl command holds
    the lock (one that does drives them itself)."""
    from fnctl.deploy.rolloutdriver import tick

    def progress(line: str) -> None:
        _event("rollout", detail=line)

    while not stop.is_set():
        try:
            await asyncio.to_thread(tick, project, store_path, progress)
        except Exception:  # a busy store or a failed stop: the next tick tries again
            log.exception("advancing the rollouts failed")
        try:
            await asyncio.wait_for(stop.wait(), ROLLOUT_TICK)
        except TimeoutError:
            pass


async def _close(gateway: Gateway) -> None:
    await asyncio.to_thread(gateway.audit.close)
    gateway.authenticator.close()
    if gateway.broker is not None:
        await asyncio.to_thread(gateway.broker.close_all)
    source = gateway.tables.source
    if isinstance(source, StoreTable):
        source.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(number: int) -> None:
        if stop.is_set() and main is not None:  # the second signal: stop waiting for the drain
            _event("forced", signal=signal.Signals(number).name)
            main.cancel()
        stop.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal, number)
    return stop


def _event(what: str, **fields: Any) -> None:
    """A lifecycle line on stderr (listening, draining, stopped), JSON like every other line."""
    log.info(what, extra={"fields": fields})


class _JsonLines(logging.Formatter):
    """Log records as JSON lines, for journald and log shippers (the access log has its own, on stdout)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("fnctl").setLevel(logging.INFO)
