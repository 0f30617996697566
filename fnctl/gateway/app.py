"""The gateway's HTTP side: `POST /invoke/NAME`, the HTTP Trigger routes, /healthz, /readyz and /metrics
(aiohttp's server is imported here, in `request`, `pipeline` and `server`, nowhere else).

Every request goes (the steps are `fnctl.gateway.pipeline`'s): request id → function → authenticate → authorize
(by the function's live access rules) → pick a revision (router; pinning is a privilege of its own) → body, read
in full (size limit, own deadline) → per-function concurrency unit → instance pool (with a deadline) → response.
Each request, refused or not (an unknown route and a wrong method included), is audited exactly once, and each
one that reached a revision is measured. Nothing a client sends ends in a traceback: bad input is a 4xx with a
one-line reason, and an unexpected failure a 500 logged as one line. The routing table is re-read from the store
in the background, so `fnctl apply` / `rollback` take effect without a restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from fnctl.gateway import router
from fnctl.gateway.auth import Principal, PrincipalKind
from fnctl.gateway.dataapi import DataApi, DataRoute
from fnctl.gateway.forward import PEER_PATH, Relayed, client_of
from fnctl.gateway.httpevent import audit_outcome, invoke_response, json_body, trigger_response
from fnctl.gateway.metrics import CONTENT_TYPE as METRICS_TYPE
from fnctl.gateway.peerinvoke import outcome_status, peer_reply, run_on_peer
from fnctl.gateway.pipeline import RequestPipeline
from fnctl.gateway.request import (
    NO_HEADERS,
    RAN_NOTHING,
    Call,
    GatewayLimits,
    Incoming,
    Reject,
    Reply,
    dumps,
    json_reply,
    reject_reply,
    reply_of,
    reply_response,
    request_id,
)
from fnctl.gateway.table import TableSource
from fnctl.gateway.triggerapi import TriggerApi
from fnctl.invocation.outcome import Outcome
from fnctl.invocation.requestid import new_request_id

__all__ = ["GATEWAY", "Gateway", "GatewayLimits", "make_app"]

if TYPE_CHECKING:  # the real ones; the tests pass fakes of the same shape
    from fnctl.gateway.audit import AuditLog
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.broker import Broker
    from fnctl.gateway.metrics import Metrics
    from fnctl.gateway.pools import PoolManager
    from fnctl.gateway.views import Views

log = logging.getLogger("fnctl.gateway")
# Fixed endpoints and the methods they answer: another method on them is a 405, not a 404.
_FIXED = {"/healthz": "GET, HEAD", "/readyz": "GET, HEAD", "/metrics": "GET, HEAD"}
LOG_HEADER = "X-Fnctl-Log"  # `tail`: the response carries the invocation's last log lines (like Lambda's LogType)


class Gateway(RequestPipeline):
    """The endpoints on the request pipeline, and what every request ends with (audit, metrics);
    `make_app` mounts them on an aiohttp application."""

    def __init__(
        self,
        *,
        pool: PoolManager,
        authenticator: Authenticator,
        metrics: Metrics,
        audit: AuditLog,
        source: TableSource,
        limits: GatewayLimits = GatewayLimits(),
        identity: Mapping[str, str] | None = None,
        broker: Broker | None = None,
    ) -> None:
        super().__init__(
            pool=pool, authenticator=authenticator, metrics=metrics, source=source, limits=limits, broker=broker
        )
        self.audit = audit
        self.identity = dict(identity or {})
        self.pool_ready = False
        self.draining = False
        self.leading = False  # this gateway holds the controller's lock (fnctl.gateway.leadership)
        self._measured: set[tuple[str, int]] = set()  # pools whose gauges /metrics shows
        self.views: Views | None = None  # GET /v1/views/{name} (with the data plane)
        self.lean_data: DataRoute | None = None  # the data API's routes the lean path serves (`make_app`)
        # `fnctl serve --workers`: this worker's metrics text → every worker's (fnctl.gateway.crew)
        self.exposition: Callable[[bytes], bytes] | None = None

    # ---- handlers ----

    async def handle_invoke(self, request: web.Request) -> web.StreamResponse:
        """POST /invoke/{function}: the body is the event (JSON), the response the result (JSON)."""
        return await self._respond(request, await self.invoke(request, request.match_info["function"]))

    async def handle_trigger(self, request: web.Request) -> web.StreamResponse:
        """Any other path: the HTTP Trigger whose method and path match, as a proxy event and back."""
        return await self._respond(request, await self.trigger(request))

    async def invoke(self, request: Incoming, function: str) -> Reply:
        """`POST /invoke/function`, audited and measured, whichever server parsed it."""
        source = request.remote if self.forwarder is None else await client_of(self.forwarder, request)
        call = Call(request_id(request), function, None, source)
        try:
            result, revision = await self._dispatch(request, call, None)
            outcome = result.outcome
            call.outcome, call.cold_start = audit_outcome(outcome), result.cold_start
            extra = {"X-Fnctl-Revision": str(revision), "X-Request-Id": call.request_id}
            if result.cold_start:
                extra["X-Fnctl-Cold-Start"] = "1"
            if outcome.ok and LOG_HEADER not in request.headers:  # the common case, built directly
                extra["Content-Type"] = "application/json"
                extra["X-Fnctl-Duration-Ms"] = f"{outcome.duration_ms:.3f}"
                reply = Reply(200, extra, json_body(outcome.result))  # the gateway's own names: a dict
            else:
                logs = request.headers.get(LOG_HEADER, "").lower() == "tail"
                reply = reply_of(invoke_response(outcome, logs), extra)
        except Relayed as relayed:
            reply = self._relayed(call, relayed)
        except Reject as reject:
            call.outcome = reject.outcome
            reply = reject_reply(reject, {"error": reject.reason, "requestId": call.request_id})
        except Exception as exc:  # noqa: BLE001 -- a bug must cost one request a 500 and one log line, never a traceback
            reply = self._internal_reply(call, exc, {"error": "Internal Server Error", "requestId": call.request_id})
        return self._finish_reply(call, request, reply)

    async def trigger(self, request: Incoming) -> Reply:
        """The HTTP Trigger whose method and path match (404 or 405 when none), whichever server parsed it."""
        table = self.table or router.EMPTY
        path = request.raw_path.partition("?")[0]
        found = router.match(table.http, request.method, path)
        if not isinstance(found, router.RouteMatch):
            # No function: audited under the empty name, like any other request (a scan shows up in the audit).
            call = Call(request_id(request), "", None, request.remote)
            allowed = ", ".join(sorted(found.allowed)) if found else _fixed_methods(path)
            refused = ("not_allowed", 405, "Method Not Allowed") if allowed else ("not_found", 404, "Not Found")
            call.outcome, status, reason = refused
            reply = json_reply({"message": reason}, status, {"Allow": allowed} if allowed else None)
            return self._finish_reply(call, request, reply)
        source = request.remote if self.forwarder is None else await client_of(self.forwarder, request)
        call = Call(request_id(request), found.route.function, found.route.trigger, source)
        try:
            result, _ = await self._dispatch(request, call, found)
            outcome = result.outcome
            call.outcome, call.cold_start = audit_outcome(outcome), result.cold_start
            value = outcome.result
            if outcome.ok and not (isinstance(value, dict) and "statusCode" in value):  # a plain value, as JSON
                headers = {"Content-Type": "application/json", "X-Request-Id": call.request_id}
                reply = Reply(200, headers, json_body(value))  # trigger_response's answer, built directly
            else:
                reply = reply_of(trigger_response(outcome))
        except Relayed as relayed:
            reply = self._relayed(call, relayed)
        except Reject as reject:
            call.outcome = reject.outcome
            reply = reject_reply(reject, {"message": reject.reason})
        except Exception as exc:  # noqa: BLE001 -- as in invoke
            reply = self._internal_reply(call, exc, {"message": "Internal server error"})
        return self._finish_reply(call, request, reply)

    @staticmethod
    def _relayed(call: Call, relayed: Relayed) -> Reply:
        """A peer gateway's answer: audited here as `forwarded`, without a revision (the peer chose it, and
        audits and measures the invocation: rollout analysis counts it once)."""
        call.outcome, call.revision = "forwarded", None
        return relayed.reply

    def _internal_error(self, call: Call, exc: Exception, body: dict[str, Any]) -> web.Response:
        return reply_response(self._internal_reply(call, exc, body))

    def _internal_reply(self, call: Call, exc: Exception, body: dict[str, Any]) -> Reply:
        """A 500 for what no check foresaw: logged as one line (type and message), no traceback anywhere."""
        log.error(
            "request %s: internal error: %s: %s",
            call.request_id,
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
        call.outcome = "internal"
        return Reply(500, CIMultiDict({"Content-Type": "application/json"}), dumps(body), close=True)

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "draining" if self.draining else "ok", **self.identity})

    async def handle_ready(self, request: web.Request) -> web.StreamResponse:
        unreachable = self.tables.unreachable
        ready = self.table is not None and self.pool_ready and not self.draining and unreachable is None
        status = "ready" if ready else "draining" if self.draining else "unready" if unreachable else "starting"
        body: dict[str, object] = {
            "status": status,
            "functions": len(self.table.functions) if self.table else 0,
            "leader": self.leading,  # drives rollouts, cron and onCommit delivery (fnctl.gateway.leadership)
        }
        if unreachable is not None and not self.draining:
            body["reason"] = unreachable
        return web.json_response(body, status=200 if ready else 503)

    async def handle_metrics(self, request: web.Request) -> web.StreamResponse:
        body = self.metrics_text()
        if self.exposition is not None:
            body = self.exposition(body)
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    def metrics_text(self) -> bytes:
        """This process's metrics in the Prometheus text format, the instance gauges brought up to date."""
        pools = self.pool.stats()
        for (function, revision), stats in pools.items():
            self.metrics.set_instances(function, revision, stats.instances)
        for function, revision in self._measured - pools.keys():  # pools gone: their gauges go too
            self.metrics.forget(function, revision)
        self._measured = set(pools)
        return self.metrics.render()

    def _record(self, call: Call, request: Incoming | None, status: int) -> None:
        """What every request ends with: measured (when it reached a revision) and audited."""
        duration = time.monotonic() - call.started
        if call.revision is not None:
            self.metrics.observe(call.function, call.revision, status, duration, call.cold_start)
        self.audit.record(
            request_id=call.request_id,
            principal=call.principal.audit_name if call.principal else None,
            function=call.function,
            revision=call.revision,
            trigger=call.trigger,
            outcome=call.outcome,
            status=status,
            duration_ms=duration * 1000,
            source=call.source,
            access={"method": request.method, "path": request.path} if request is not None else None,
        )

    def _finish_reply(self, call: Call, request: Incoming | None, reply: Reply) -> Reply:
        self._record(call, request, reply.status)
        if "X-Request-Id" not in reply.headers:
            reply.headers["X-Request-Id"] = call.request_id
        return reply

    async def _finish(
        self, call: Call, request: web.Request | None, response: web.StreamResponse
    ) -> web.StreamResponse:
        """`_finish_reply` for an aiohttp response (the data API's, views', dashboard's)."""
        self._record(call, request, response.status)
        if "X-Request-Id" not in response.headers:
            response.headers["X-Request-Id"] = call.request_id
        if request is not None:
            await self._cut_if_slow(request, response)
        return response

    async def _respond(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = reply_response(reply)
        await self._cut_if_slow(request, response)
        return response

    @staticmethod
    async def _cut_if_slow(request: web.Request, response: web.StreamResponse) -> None:
        if response.status == 408:
            # A slow client is cut now: aiohttp would otherwise linger, reading the rest of its body.
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()

    def refused(self, request: BaseRequest, status: int, outcome: str) -> None:
        """Audit a request the HTTP server refused before any handler saw it (it is not valid HTTP)."""
        self.audit.record(
            request_id=new_request_id(),
            principal=None,
            function="",
            revision=None,
            outcome=outcome,
            status=status,
            duration_ms=0.0,
            source=request.remote,
            access={"method": request.method, "path": request.path},
        )

    # ---- invocations that do not come over HTTP (cron, data hooks) ----

    async def audit_internal(self, call: Call, status: int) -> None:
        """Audit and measure an invocation the gateway made itself (a data hook) as it does requests."""
        await self._finish(call, None, web.Response(status=status))

    async def invoke_internal(
        self,
        function: str,
        event: Any,
        *,
        trigger: str,
        tenant: str | None = None,
        request_id: str | None = None,
        forwardable: bool = True,
        principal: Principal | None = None,
        timeout: float | None = None,
        read_only: bool = False,
        revision: int | None = None,
    ) -> tuple[int, Outcome | None]:
        """Run `function` for a trigger of the gateway itself (cron, onCommit; a peer's, fnctl.gateway.peerinvoke):
        routed, measured and audited like any request, as the principal `trigger:<name>` with no roles (in
        `tenant`: an onCommit event's document's), or as `principal` (the caller a peer ran a manual trigger or
        hook for). With no instance on this node (engine = "swarm"), a peer gateway that has one runs it
        (`forwardable` False: one a peer sent, on the `revision` it picked; a refusal before it ran is raised,
        Reject). `timeout` caps the revision's; `read_only` (a peer's hook run) refuses its data writes and
        audits an Abort as the hook's verdict. Returns (status, outcome or None)."""
        call = Call(request_id or new_request_id(), function, trigger, None, forwarded=not forwardable)
        call.principal = principal or Principal(f"trigger:{trigger}", (), tenant or None, PrincipalKind.ANONYMOUS)
        outcome: Outcome | None = None
        try:
            route = (self.table or router.EMPTY).functions.get(function)
            if route is None:
                raise Reject(404, "Not Found", "not_found")
            call.revision = self._pick(route, NO_HEADERS, call.principal, {}, call) if revision is None else revision
            info = route.revisions.get(call.revision)
            if info is None:
                raise Reject(503, "Service Unavailable", "unavailable")
            if timeout is not None:
                info = replace(info, timeout=min(info.timeout, timeout))
            payload = {"trigger": trigger, "tenant": tenant, "event": event}
            if forwardable and (ran := await run_on_peer(self, call, route, info, payload)) is not None:
                self._record(call, None, ran.status)
                return ran.status, ran.outcome
            outcome = (await self._run(call, info, event, call.principal, read_only=read_only)).outcome
            status, call.outcome = outcome_status(outcome, hook=read_only)
        except Reject as reject:
            status, call.outcome = reject.status, reject.outcome
            if not forwardable and reject.outcome in RAN_NOTHING:  # its sender may try another peer (peer_reply)
                self._record(call, None, status)
                raise
        self._record(call, None, status)
        return status, outcome

    async def handle_peer(self, request: web.Request) -> web.StreamResponse:
        """POST /_peer/invoke/{function}: a peer gateway's own invocation, signed (fnctl.gateway.peerinvoke)."""
        return reply_response(await peer_reply(self, request.headers, request.path, await request.read()))


def _fixed_methods(path: str) -> str:
    """The methods a fixed endpoint answers ("" when `path` is none): for the Allow of a 405."""
    return "POST" if path.startswith("/invoke/") and path.count("/") == 2 else _FIXED.get(path, "")


# ---- the aiohttp application and server ----------------------------------------------------------

GATEWAY = web.AppKey("gateway", Gateway)


def make_app(gateway: Gateway, mounts: Sequence[Callable[[web.Application], None]] = ()) -> web.Application:
    """The application: fixed endpoints first, then every other path to the HTTP Triggers (which change at
    run time, so they are matched by the router, not registered with aiohttp's frozen one). `mounts` add routes
    of their own before the catch-all (the dashboard's, `fnctl serve --ui`)."""
    app = web.Application(client_max_size=gateway.limits.max_body + 1)
    app[GATEWAY] = gateway
    app.router.add_post("/invoke/{function}", gateway.handle_invoke)
    app.router.add_get("/healthz", gateway.handle_health)
    app.router.add_get("/readyz", gateway.handle_ready)
    app.router.add_get("/metrics", gateway.handle_metrics)
    app.router.add_post(PEER_PATH + "{function}", gateway.handle_peer)
    if gateway.broker is not None:
        data = DataApi(gateway, gateway.broker)
        data.add_routes(app)
        gateway.lean_data = data.lean_route
        TriggerApi(gateway).add_routes(app)
        if gateway.views is not None:
            gateway.views.add_routes(app)
    for mount in mounts:
        mount(app)
    app.router.add_route("*", "/{tail:.*}", gateway.handle_trigger)

    async def started(_: web.Application) -> None:
        await gateway.start()

    async def shutting_down(_: web.Application) -> None:
        gateway.draining = True

    async def cleaned(_: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(started)
    app.on_shutdown.append(shutting_down)
    app.on_cleanup.append(cleaned)
    return app
