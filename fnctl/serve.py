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

from fnctl.errors import BadInput
from fnctl.gateway import Gateway, GatewayLimits, make_app
from fnctl.gatewaytable import StoreTable
from fnctl.project import CONFIG_FILE, Project, read_config
from fnctl.store import connect
from fnctl.units import parse_duration, parse_size

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
                access_log: bool = True) -> ServeOptions:
    """The options of `fnctl serve`: fnctl.toml's [gateway] section, overridden by the command line's."""
    limits, idle = project_limits(project)
    try:
        if read_timeout is not None:
            limits = replace(limits, read_timeout=read_timeout)
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


_SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    # fnctl.toml [gateway] key → (GatewayLimits field, parser)
    "maxBodySize": ("max_body", parse_size), "maxHeaderSize": ("max_header", parse_size),
    "readTimeout": ("read_timeout", parse_duration), "timeoutMargin": ("timeout_margin", parse_duration),
    "maxConcurrentPerFunction": ("max_concurrent", int), "drainTimeout": ("drain_timeout", parse_duration),
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


class _Protocol(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering oversized request headers with 431 (and an oversized request
    line with 414) instead of a generic 400 that echoes the offending bytes back."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 400 and isinstance(exc, BadHttpMessage):
            too_many = "Too many headers" in str(exc)
            if too_many or isinstance(exc, LineTooLong):
                status = 431 if too_many or exc.args[1:2] == (self.max_field_size,) else 414
                response = web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}\n")
                response.force_close()
                return response
        return super().handle_error(request, status, exc, message)


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections use `_Protocol` (aiohttp has no public hook for the handler class)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


async def start_server(app: web.Application, host: str, port: int, limits: GatewayLimits) -> tuple[GatewayRunner, int]:
    """Listen on host:port (0: any free port); returns the runner (for `cleanup()`) and the bound port.

    Idle keep-alive connections and clients slow to send their request line and headers are both cut after
    `read_timeout`: aiohttp's keep-alive timer runs from the connection's start until a whole request is in.
    """
    line_limit = 8190 if limits.max_header != 8190 else 8191  # distinct, so 414 and 431 can be told apart
    runner = GatewayRunner(app, handle_signals=False, access_log=None, keepalive_timeout=limits.read_timeout,
                           max_field_size=limits.max_header, max_line_size=line_limit,
                           lingering_time=min(10.0, limits.read_timeout), shutdown_timeout=limits.drain_timeout)
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
    from fnctl.audit import AuditLog
    from fnctl.auth import AuthConfig, Authenticator
    from fnctl.metrics import Metrics
    from fnctl.pool import PoolManager

    store = connect(store_path)
    identity = {"project": project.name, "store": store.id}
    store.close()
    pool = PoolManager(project, store_path, idle_seconds=options.idle_seconds, queue_limit=options.queue_limit)
    return Gateway(pool=pool, authenticator=Authenticator(store_path, AuthConfig.from_project(project)),
                   metrics=Metrics(), audit=AuditLog(store_path), source=StoreTable(store_path),
                   limits=options.limits, identity=identity)


async def _serve(project: Project, store_path: Path, options: ServeOptions) -> None:
    from fnctl.audit import start_access_log
    from fnctl.cron import CronRunner

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
    from fnctl.controller import tick

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
