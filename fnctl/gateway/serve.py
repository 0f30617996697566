"""`fnctl serve`: the gateway process. Wires the store, the instance pools, authentication, metrics, the audit
and cron to the gateway's HTTP app, listens, and on SIGTERM/SIGINT stops accepting, drains the requests in
flight, and closes everything in order. Runs on uvloop (a dependency everywhere but Windows), else asyncio's loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

try:  # libuv's event loop: ~10 % less gateway CPU a request (docs/serve.md); no Windows build: asyncio's loop there
    from uvloop import new_event_loop as new_loop
except ImportError:
    new_loop = None  # type: ignore[assignment]  # asyncio.Runner's default: asyncio's own loop

from fnctl.data.hooks import trigger_spec
from fnctl.data.plane import DataPlane
from fnctl.errors import BadInput
from fnctl.gateway import router
from fnctl.gateway.app import Gateway, GatewayLimits, make_app
from fnctl.gateway.audit import AuditLog, silence_access_log, start_access_log
from fnctl.gateway.auth import AuthConfig, Authenticator
from fnctl.gateway.broker import Broker, LivePolicies, StateAudit
from fnctl.gateway.crew import Crew
from fnctl.gateway.cron import CronRunner
from fnctl.gateway.dispatcher import Dispatcher
from fnctl.gateway.forward import Forwarder
from fnctl.gateway.hooks import HookRunner
from fnctl.gateway.leadership import Leadership, drive_rollouts
from fnctl.gateway.logformat import configure_logging
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.pools import PoolManager
from fnctl.gateway.poolswarm import SwarmActions
from fnctl.gateway.server import start_server
from fnctl.gateway.supervisor import supervise
from fnctl.gateway.table import StoreTable
from fnctl.gateway.triggerhealth import TriggerStates
from fnctl.gateway.views import DEFAULT_CACHE_BYTES, Views
from fnctl.manifest.project import CONFIG_FILE, Project, read_config
from fnctl.manifest.units import parse_duration, parse_size
from fnctl.state import docstore
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

log = logging.getLogger("fnctl.serve")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    idle_seconds: float = 300.0  # an instance above minInstances idle this long is stopped
    queue_limit: int = 1024  # backstop: requests waiting per revision (the expected wait sheds long before)
    access_log: bool = True
    ui: bool = False  # the dashboard at /ui (fnctl.toml's gateway.ui, or --ui)
    crew: Crew | None = None  # one worker of `fnctl serve --workers N` (fnctl.gateway.supervisor), else None


def parse_address(text: str) -> tuple[str, int]:
    """host:port (IPv6 as [::1]:8080); a bare port means 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"invalid address {text!r}: use host:port, e.g. 127.0.0.1:8080")
    return host, int(port)


def options_for(
    project: Project,
    *,
    address: str | None = None,
    read_timeout: float | None = None,
    max_body: str | None = None,
    max_header: str | None = None,
    idle_timeout: str | None = None,
    access_log: bool = True,
    body_timeout: float | None = None,
    max_connections_per_client: int | None = None,
    ui: bool = False,
) -> ServeOptions:
    """The options of `fnctl serve`: fnctl.toml's [gateway] section, overridden by the command line's."""
    limits, idle = project_limits(project)
    try:
        if read_timeout is not None:
            limits = replace(limits, read_timeout=_positive(read_timeout, "--read-timeout"))
        if body_timeout is not None:
            limits = replace(limits, body_timeout=_positive(body_timeout, "--body-timeout"))
        if max_connections_per_client is not None:
            limits = replace(
                limits,
                max_connections_per_client=int(_positive(max_connections_per_client, "--max-connections-per-client")),
            )
        if max_body is not None:
            limits = replace(limits, max_body=parse_size(max_body))
        if max_header is not None:
            limits = replace(limits, max_header=parse_size(max_header))
        if idle_timeout is not None:
            idle = parse_duration(idle_timeout)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    host, port = parse_address(address or project.gateway)
    ui = ui or bool(project.has_config and read_config(project.root / CONFIG_FILE).get("gateway", {}).get("ui", False))
    options = ServeOptions(host=host, port=port, limits=limits, access_log=access_log, ui=ui)
    return options if idle is None else replace(options, idle_seconds=idle)


def _positive(value: float, what: str) -> float:
    if not value > 0:  # NaN too
        raise ValueError(f"{what} must be more than 0, not {value}")
    return value


_SETTINGS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    # fnctl.toml [gateway] key → (GatewayLimits field, parser)
    "maxBodySize": ("max_body", parse_size),
    "maxHeaderSize": ("max_header", parse_size),
    "readTimeout": ("read_timeout", parse_duration),
    "timeoutMargin": ("timeout_margin", parse_duration),
    "maxConcurrentPerFunction": ("max_concurrent", int),
    "drainTimeout": ("drain_timeout", parse_duration),
    "bodyTimeout": ("body_timeout", parse_duration),
    "maxConnectionsPerClient": ("max_connections_per_client", int),
    "maxQueueWait": ("max_queue_wait", parse_duration),
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


# ---- the process ----------------------------------------------------------------------------------


# Routes mounted beside the gateway's, made once the gateway exists (the dashboard: `fnctl.dashboard`, which sits
# above this package and is handed in by the CLI).
Mount = Callable[[Gateway], Callable[[Any], None]]


def serve(project: Project, store_path: StateLocation, options: ServeOptions, mounts: Sequence[Mount] = ()) -> bool:
    """Run the gateway until SIGTERM or SIGINT; False when a second signal cut the drain short."""
    configure_logging()
    worker = {} if options.crew is None else {"worker": options.crew.worker}
    with asyncio.Runner(loop_factory=new_loop) as runner:
        try:
            runner.run(_serve(project, store_path, options, mounts))
        except asyncio.CancelledError:
            _event("stopped", drained=False, **worker)
            return False
    _event("stopped", drained=True, **worker)
    return True


def serve_workers(command: Sequence[str], workers: int, options: ServeOptions) -> bool:
    """`fnctl serve --workers N`: run `command` (this `fnctl serve` line, without `--workers` and `--address`)
    as N worker processes on the port (fnctl.gateway.supervisor); False when one did not drain."""
    configure_logging()
    return supervise(command, workers, options.host, options.port)


def _gateway(project: Project, store_path: StateLocation, options: ServeOptions) -> Gateway:
    """The gateway and the parts it uses (authentication, audit, metrics, table, pools), not started yet."""
    store = connect(store_path)
    identity = {"project": project.name, "store": store.id}
    store.close()
    pool = PoolManager(
        project,
        store_path,
        idle_seconds=options.idle_seconds,
        queue_limit=options.queue_limit,
        max_wait=options.limits.max_queue_wait,
        crew=options.crew,
    )
    gateway = Gateway(
        pool=pool,
        authenticator=Authenticator(store_path, AuthConfig.from_project(project)),
        metrics=Metrics(),
        audit=AuditLog(store_path, process=True),
        source=StoreTable(store_path),
        limits=options.limits,
        identity=identity,
    )
    gateway.admission = pool.shed
    gateway.broker = data_broker(store_path, gateway)
    gateway.broker.hooks = HookRunner(gateway, gateway.broker, TriggerStates(store_path))
    pool.call_handler = gateway.broker.handler_for
    gateway.views = Views(gateway, gateway.broker, view_cache_bytes(project))
    if options.crew is not None:
        gateway.exposition = options.crew.exposition
    return gateway


def view_cache_bytes(project: Project) -> int:
    """fnctl.toml's `[views] cacheSize` (e.g. "64Mi"): the memory views' cached results may take."""
    if not project.has_config:
        return DEFAULT_CACHE_BYTES
    section = read_config(project.root / CONFIG_FILE).get("views", {})
    try:
        return parse_size(section["cacheSize"]) if "cacheSize" in section else DEFAULT_CACHE_BYTES
    except ValueError as exc:
        raise BadInput(f"{project.root / CONFIG_FILE}: views: cacheSize: {exc}") from None


def data_broker(store_path: StateLocation, gateway: Gateway) -> Broker:
    """The data plane the gateway serves (REST under /v1/, the instances' `context.db` calls): the data file
    beside the state store, the collections `apply` put there, and the live Policies of the routing table."""
    plane = DataPlane(
        docstore.open_at(store_path),
        LivePolicies(lambda: None if gateway.table is None else gateway.table.policies),
        StateAudit(store_path),
        outbox=lambda: router.EMPTY.on_commit if gateway.table is None else gateway.table.on_commit,
    )
    return Broker(plane)


async def _serve(project: Project, store_path: StateLocation, options: ServeOptions, mounts: Sequence[Mount]) -> None:
    stop = _stop_on_signals()
    # The access log first: the audit's writer process writes the lines itself when they go to stdout.
    stop_access = start_access_log(sys.stdout) if options.access_log else silence_access_log()
    gateway = _gateway(project, store_path, options)
    flushing, cron_stop = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    drained = False
    try:
        await gateway.pool.start()
        crew = options.crew
        runner, port = await start_server(
            make_app(gateway, [mount(gateway) for mount in mounts]),
            options.host,
            options.port,
            options.limits,
            reuse_port=crew is not None,
        )
        gateway.pool_ready = True
        # What start-up made (modules, the app and its routes, the pools) lives as long as the gateway: out of
        # the collector's way, a full collection no longer walks it all (~30 ms of CPU here, 80-200 ms of wall
        # time under load, every request and call in flight stalled meanwhile), as the runtime does.
        gc.freeze()
        tasks.append(asyncio.create_task(gateway.metrics.run_flusher(store_path, flushing)))
        if project.engine == "swarm":
            gateway.forwarder = _forwarder(project, store_path, gateway, options.host, port)
            tasks.append(asyncio.create_task(gateway.forwarder.run(cron_stop)))
        if crew is None or crew.owner:  # the host's candidate for the controller's work (one of its workers)

            def controller(stop: asyncio.Event) -> list[asyncio.Task[None]]:
                cron = CronRunner(
                    store_path,
                    lambda name, function, event: gateway.invoke_internal(function, event, trigger=name),
                    moved=gateway.tables.subscribe(),  # SQLite: cron and rollouts read once the table saw a change
                )
                return [
                    asyncio.create_task(_dispatcher(gateway).run(stop)),
                    asyncio.create_task(cron.run(stop)),
                    asyncio.create_task(drive_rollouts(project, store_path, stop, gateway.tables.subscribe())),
                ]

            def led(leading: bool) -> None:
                gateway.leading = leading
                _event("leading" if leading else "following")

            tasks.append(asyncio.create_task(Leadership(store_path, controller, led).run(cron_stop)))
        if crew is not None:
            tasks.append(asyncio.create_task(_publish_metrics(gateway, crew, cron_stop)))
        worker = {} if crew is None else {"worker": crew.worker, "workers": crew.workers}
        # store: a URL without its password; loop: "uvloop", or "asyncio" where uvloop is not installed
        fields = {"store": str(store_path), "loop": type(asyncio.get_running_loop()).__module__.partition(".")[0]}
        _event("listening", address=f"{options.host}:{port}", project=project.name, **fields, **worker)
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
        stop_access()


_WILDCARDS = ("", "0.0.0.0", "::")


def _forwarder(project: Project, store_path: StateLocation, gateway: Gateway, host: str, port: int) -> Forwarder:
    """engine = "swarm": this node's gateway among its peers (fnctl.gateway.forward), reached at
    swarm.advertise, else at its listening address (one on every interface must say where, or it is not
    forwarded to: it still forwards)."""
    actions = gateway.pool.actions
    assert isinstance(actions, SwarmActions)
    address = project.swarm.advertise
    if address is None and host not in _WILDCARDS:
        address = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if address is None:
        log.warning("listening on %s without swarm.advertise: other nodes' gateways cannot forward here", host)
    return Forwarder(
        store_path,
        node=actions.agent.hostname,
        address=address,
        held=gateway.pool.held,
        metrics=gateway.metrics,
        max_connections=gateway.limits.max_connections_per_client,
    )


def _dispatcher(gateway: Gateway) -> Dispatcher:
    """onCommit delivery through the gateway's invocation path. A failed delivery is a fault of its trigger
    (towards `disableAfter`); a disabled trigger's events wait (`paused`) until `fnctl enable`."""
    assert gateway.broker is not None
    hooks = gateway.broker.hooks
    states = hooks.states if isinstance(hooks, HookRunner) else None

    async def deliver(trigger: str, function: str, event: Any, tenant: str) -> tuple[bool, str]:
        status, outcome = await gateway.invoke_internal(function, event, trigger=trigger, tenant=tenant)
        ok = outcome is not None and outcome.ok and status == 200
        detail = "" if outcome is None else f": {outcome.failure or ''} {outcome.message or ''}".rstrip()
        if states is not None:
            spec = trigger_spec(trigger, (gateway.table.triggers if gateway.table is not None else {}).get(trigger, {}))
            await (states.succeeded(spec) if ok else states.fault(spec, f"status {status}{detail}"))
        return (True, "") if ok else (False, f"status {status}{detail}")

    return Dispatcher(
        gateway.broker,
        deliver,
        lambda: None if gateway.table is None else gateway.table.triggers,
        paused=states.paused if states is not None else tuple,
        metrics=gateway.metrics,
    )


PUBLISH_INTERVAL = 1.0  # seconds between a worker's writes of its metrics for the others' /metrics


async def _publish_metrics(gateway: Gateway, crew: Crew, stop: asyncio.Event) -> None:
    """A worker's metrics, written where the other workers' /metrics read them, until the gateway stops."""
    while not stop.is_set():
        try:
            crew.publish(gateway.metrics_text())
        except OSError as exc:  # the run directory gone (the supervisor stopping): nothing to tell
            log.warning("publishing this worker's metrics: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), PUBLISH_INTERVAL)
        except TimeoutError:
            pass


async def _close(gateway: Gateway) -> None:
    if gateway.forwarder is not None:
        await gateway.forwarder.close()
    await asyncio.to_thread(gateway.audit.close)
    gateway.authenticator.close()
    if gateway.broker is not None:
        if isinstance(gateway.broker.hooks, HookRunner):
            await asyncio.to_thread(gateway.broker.hooks.states.close)
        await asyncio.to_thread(gateway.broker.close_all)
    gateway.tables.close()


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
