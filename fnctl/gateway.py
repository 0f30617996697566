"""The gateway's HTTP side (with `serve`, the only modules that import aiohttp's server): `POST /invoke/NAME`,
the HTTP Trigger routes, /healthz, /readyz and /metrics.

Every request goes: request id → function → authenticate → pick a revision (router) → authorize → per-function
concurrency slot → body (size and read-time limits) → instance pool (with a deadline) → response; each attempt,
denied or not, is audited, and each one that reached a revision is measured. The routing table is re-read
from the store in the background, so `fnctl apply` / `rollback` take effect without a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from fnctl import router
from fnctl.auth import ANONYMOUS, WWW_AUTHENTICATE, Principal, PrincipalKind, Unauthenticated, authorize
from fnctl.gatewaytable import TableFollower, TableSource
from fnctl.httpevent import (
    FAILURE_STATUS, HttpRequest, HttpResponse, audit_outcome, invoke_response, to_event, trigger_response,
)
from fnctl.instances import Failure, Outcome
from fnctl.pool import Overloaded, PoolResult, Unavailable

if TYPE_CHECKING:  # the real ones; the tests pass fakes of the same shape
    from fnctl.audit import AuditLog
    from fnctl.auth import Authenticator
    from fnctl.metrics import Metrics
    from fnctl.pool import PoolManager

log = logging.getLogger("fnctl.gateway")
PIN_HEADER = "X-Fnctl-Revision"
DEADLINE_TICK = 0.05  # seconds: how late a 504 may be
LOG_HEADER = "X-Fnctl-Log"  # `tail`: the response carries the invocation's last log lines (like Lambda's LogType)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class GatewayLimits:
    max_body: int = 6 * 2**20  # bytes of a request body (a function's payload limit may be lower): 413
    max_header: int = 16 * 2**10  # bytes of all request headers, and of any one header line: 431
    read_timeout: float = 10.0  # seconds a client may take to send a request (and to idle on keep-alive)
    timeout_margin: float = 3.0  # added to the function's timeout: queueing and a cold start; then 504
    max_concurrent: int = 256  # requests in progress per function: 429 beyond
    reload_interval: float = 0.25  # seconds between checks of the store's routing table
    drain_timeout: float = 30.0  # seconds in-flight requests get to finish on shutdown


class Reject(Exception):
    """A request answered by the gateway itself, before or instead of the function."""

    def __init__(self, status: int, reason: str, outcome: str, *, headers: Mapping[str, str] | None = None,
                 close: bool = False) -> None:
        super().__init__(reason)
        self.status, self.reason, self.outcome = status, reason, outcome
        self.headers = dict(headers or {})
        self.close = close


@dataclass
class Call:
    """One request's bookkeeping, for the audit and the metrics."""

    request_id: str
    function: str
    trigger: str | None
    source: str | None
    started: float = field(default_factory=time.monotonic)
    principal: Principal | None = None
    revision: int | None = None
    outcome: str = "ok"  # ok, error (the function failed), or why the gateway answered itself
    cold_start: bool = False


class Gateway:
    def __init__(self, *, pool: PoolManager, authenticator: Authenticator, metrics: Metrics, audit: AuditLog,
                 source: TableSource, limits: GatewayLimits = GatewayLimits(),
                 identity: Mapping[str, str] | None = None) -> None:
        self.pool, self.authenticator, self.metrics, self.audit = pool, authenticator, metrics, audit
        self.limits = limits
        self.tables = TableFollower(source, pool, limits.reload_interval)
        self.identity = dict(identity or {})
        self.pool_ready = False
        self.draining = False
        self._active: dict[str, int] = {}
        self._deadlines: dict[asyncio.Task[Any], float] = {}  # requests waiting on the pool: their deadline
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def table(self) -> router.Table | None:
        return self.tables.table

    async def start(self) -> None:
        await self.tables.start()
        self._watchdog = asyncio.create_task(self._watch_deadlines())

    async def stop(self) -> None:
        await self.tables.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()

    # ---- handlers ----

    async def handle_invoke(self, request: web.Request) -> web.StreamResponse:
        """POST /invoke/{function}: the body is the event (JSON), the response the result (JSON)."""
        call = Call(_request_id(request), request.match_info["function"], None, request.remote)
        try:
            result, revision = await self._dispatch(request, call, None)
            outcome = result.outcome
            call.outcome, call.cold_start = audit_outcome(outcome), result.cold_start
            extra = {"X-Fnctl-Revision": str(revision), "X-Request-Id": call.request_id}
            if result.cold_start:
                extra["X-Fnctl-Cold-Start"] = "1"
            if outcome.ok and LOG_HEADER not in request.headers:  # the common case, built directly
                response = web.Response(body=_dumps(outcome.result), headers={
                    "Content-Type": "application/json", "X-Fnctl-Duration-Ms": f"{outcome.duration_ms:.3f}", **extra})
            else:
                logs = request.headers.get(LOG_HEADER, "").lower() == "tail"
                response = _web(invoke_response(outcome, logs), extra)
        except Reject as reject:
            call.outcome = reject.outcome
            response = _reject_response(reject, {"error": reject.reason, "requestId": call.request_id})
        return await self._finish(call, request, response)

    async def handle_trigger(self, request: web.Request) -> web.StreamResponse:
        """Any other path: the HTTP Trigger whose method and path match, as a proxy event and back."""
        table = self.table or router.EMPTY
        found = router.match(table.http, request.method, request.raw_path.partition("?")[0])
        if not isinstance(found, router.RouteMatch):
            status, reason = (405, "Method Not Allowed") if found else (404, "Not Found")
            response = web.json_response({"message": reason}, status=status, headers={
                "X-Request-Id": _request_id(request), **({"Allow": ", ".join(sorted(found.allowed))} if found else {})})
            return response
        call = Call(_request_id(request), found.route.function, found.route.trigger, request.remote)
        try:
            result, _ = await self._dispatch(request, call, found)
            call.outcome, call.cold_start = audit_outcome(result.outcome), result.cold_start
            response = _web(trigger_response(result.outcome))
        except Reject as reject:
            call.outcome = reject.outcome
            response = _reject_response(reject, {"message": reject.reason})
        return await self._finish(call, request, response)

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "draining" if self.draining else "ok", **self.identity})

    async def handle_ready(self, request: web.Request) -> web.StreamResponse:
        ready = self.table is not None and self.pool_ready and not self.draining
        body = {"status": "ready" if ready else "draining" if self.draining else "starting",
                "functions": len(self.table.functions) if self.table else 0}
        return web.json_response(body, status=200 if ready else 503)

    async def handle_metrics(self, request: web.Request) -> web.StreamResponse:
        for (function, revision), stats in self.pool.stats().items():
            self.metrics.set_instances(function, revision, stats.instances)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": _PROM_TYPE})

    # ---- the steps of one request ----

    async def _dispatch(self, request: web.Request, call: Call,
                        found: router.RouteMatch | None) -> tuple[PoolResult, int]:
        function = (self.table or router.EMPTY).functions.get(call.function)
        if function is None:
            raise Reject(404, "Not Found", "not_found")
        _check_header_size(request, self.limits.max_header)
        call.principal = principal = self._authenticate(request, call)
        revision = self._pick(function, request, principal)
        info = function.revisions.get(revision) or function.live
        if info is None or not authorize(principal, info.roles, self.table.policies if self.table else {}, call.function):
            status = 401 if principal.kind is PrincipalKind.ANONYMOUS else 403
            self.metrics.denied(call.function, status)
            raise Reject(status, "Unauthorized" if status == 401 else "Forbidden",
                         "unauthenticated" if status == 401 else "denied",
                         headers={"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else None)
        if revision not in function.revisions:
            raise Reject(404, "Not Found", "not_found")  # a pinned revision that is gone or failed
        info = function.revisions[revision]
        call.revision = revision
        active = self._active.get(call.function, 0)
        if active >= self.limits.max_concurrent:
            raise Reject(429, "Too Many Requests", "overloaded", headers={"Retry-After": "1"})
        self._active[call.function] = active + 1
        try:
            body = await self._read_body(request, min(self.limits.max_body, info.payload))
            event = _build_event(request, body, call, found, principal)
            return await self._call_pool(call, info, event, principal.as_caller()), revision
        finally:
            self._active[call.function] -= 1

    def _authenticate(self, request: web.Request, call: Call) -> Principal:
        try:
            return self.authenticator.authenticate(request.headers)
        except Unauthenticated as exc:
            log.debug("request %s: authentication failed: %s", call.request_id, exc.reason)
            call.principal = ANONYMOUS
            self.metrics.denied(call.function, 401)
            raise Reject(401, "Unauthorized", "unauthenticated", headers={"WWW-Authenticate": WWW_AUTHENTICATE}) from None

    def _pick(self, function: router.FunctionRoute, request: web.Request, principal: Principal) -> int:
        pinned_text = request.headers.get(PIN_HEADER)
        pinned = None
        if pinned_text is not None:
            if not pinned_text.strip().isdigit():
                raise Reject(400, f"{PIN_HEADER} must be a revision number", "rejected")
            pinned = int(pinned_text)
        sticky = None
        if function.sticky_by is router.StickyBy.CALLER and principal.kind is not PrincipalKind.ANONYMOUS:
            sticky = principal.subject
        elif function.sticky_by is router.StickyBy.HEADER and function.sticky_name:
            sticky = request.headers.get(function.sticky_name)
        elif function.sticky_by is router.StickyBy.COOKIE and function.sticky_name:
            sticky = request.cookies.get(function.sticky_name)
        try:
            return router.choose(function.weights, pinned=pinned,
                                 sticky_key=None if sticky is None else f"{function.name}\0{sticky}")
        except router.NoRoute:
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"}) from None

    async def _read_body(self, request: web.Request, limit: int) -> bytes:
        if not request.body_exists:
            return b""
        length = request.content_length
        if length is not None and length > limit:
            raise Reject(413, "Payload Too Large", "rejected", close=True)
        if length is not None and request.content.is_eof():
            return await request.content.readexactly(length)  # all in already: nothing to wait for
        try:
            async with asyncio.timeout(self.limits.read_timeout):
                if length is not None:
                    return await request.content.readexactly(length)
                chunks, size = [], 0
                async for chunk in request.content.iter_any():  # chunked: no length to check up front
                    size += len(chunk)
                    if size > limit:
                        raise Reject(413, "Payload Too Large", "rejected", close=True)
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError:
            raise Reject(408, "Request Timeout", "rejected", close=True) from None
        except asyncio.IncompleteReadError:
            raise Reject(400, "Bad Request", "rejected", close=True) from None

    async def _call_pool(self, call: Call, info: router.RevisionInfo, event: Any,
                         caller: dict[str, Any]) -> PoolResult:
        assert call.revision is not None
        self.metrics.inflight(call.function, call.revision, 1)
        task = asyncio.current_task()
        assert task is not None
        self._deadlines[task] = time.monotonic() + info.timeout + self.limits.timeout_margin
        try:
            return await self.pool.invoke(call.function, call.revision, event, caller=caller,
                                          request_id=call.request_id)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # the client went away, or the gateway is stopping
            task.uncancel()
            raise Reject(504, "Gateway Timeout", "timeout") from None
        except Overloaded as exc:
            retry = str(max(1, math.ceil(exc.retry_after)))
            raise Reject(429, "Too Many Requests", "overloaded", headers={"Retry-After": retry}) from None
        except Unavailable as exc:
            log.warning("request %s: %s r%s unavailable: %s", call.request_id, call.function, call.revision, exc)
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"}) from None
        finally:
            del self._deadlines[task]
            self._expired.discard(task)
            self.metrics.inflight(call.function, call.revision, -1)

    async def _watch_deadlines(self) -> None:
        # One timer for all requests, every DEADLINE_TICK: a timer per request (asyncio.timeout) costs more
        # than the rest of the gateway's own work on it.
        while True:
            await asyncio.sleep(DEADLINE_TICK)
            now = time.monotonic()
            for task, deadline in list(self._deadlines.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def _finish(self, call: Call, request: web.Request | None, response: web.StreamResponse) -> web.StreamResponse:
        status = response.status
        duration = time.monotonic() - call.started
        if call.revision is not None:
            self.metrics.observe(call.function, call.revision, status, duration, call.cold_start)
        self.audit.record(request_id=call.request_id,
                          principal=call.principal.audit_name if call.principal else None,
                          function=call.function, revision=call.revision, trigger=call.trigger,
                          outcome=call.outcome, status=status, duration_ms=duration * 1000, source=call.source,
                          access={"method": request.method, "path": request.path} if request is not None else None)
        if "X-Request-Id" not in response.headers:
            response.headers["X-Request-Id"] = call.request_id
        if status == 408 and request is not None:
            # A slow client is cut now: aiohttp would otherwise linger, reading the rest of its body.
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response

    # ---- invocations that do not come over HTTP (cron) ----

    async def invoke_internal(self, function: str, event: Any, *, trigger: str) -> tuple[int, Outcome | None]:
        """Run `function` for a trigger of the gateway itself (cron): routed, measured and audited like any
        request, as the principal `trigger:<name>` with no roles. Returns (status, outcome or None)."""
        call = Call(_new_request_id(), function, trigger, None)
        call.principal = Principal(f"trigger:{trigger}", (), None, PrincipalKind.ANONYMOUS)
        outcome: Outcome | None = None
        try:
            route = (self.table or router.EMPTY).functions.get(function)
            if route is None:
                raise Reject(404, "Not Found", "not_found")
            call.revision = self._pick(route, _NO_HEADERS, call.principal)
            info = route.revisions.get(call.revision)
            if info is None:
                raise Reject(503, "Service Unavailable", "unavailable")
            outcome = (await self._call_pool(call, info, event, call.principal.as_caller())).outcome
            status = 200 if outcome.ok else FAILURE_STATUS.get(outcome.failure or Failure.HANDLER_ERROR, 500)
            call.outcome = audit_outcome(outcome)
        except Reject as reject:
            status, call.outcome = reject.status, reject.outcome
        await self._finish(call, None, web.Response(status=status))
        return status, outcome


_PROM_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _NoHeaders:
    """A request without headers or cookies, for invocations that do not come over HTTP."""

    headers: Mapping[str, str] = {}
    cookies: Mapping[str, str] = {}


_NO_HEADERS: Any = _NoHeaders()


# Unique without a system call per request: a random prefix per process, then a counter.
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id")
    return given if given is not None and _REQUEST_ID.match(given) else _new_request_id()


def _check_header_size(request: web.Request, limit: int) -> None:
    # aiohttp limits each line; this limits their sum (many headers each under the line limit)
    size = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
    if size > limit:
        raise Reject(431, "Request Header Fields Too Large", "rejected", close=True)


def _build_event(request: web.Request, body: bytes, call: Call, found: router.RouteMatch | None,
                 principal: Principal) -> Any:
    if found is None:  # /invoke: the body is the event
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except ValueError:
            raise Reject(400, "Bad Request: the body is not JSON", "rejected") from None
    return to_event(HttpRequest(
        method=request.method, path=request.path, resource=found.route.template, path_params=found.params,
        query=request.query.items(), headers=request.headers.items(), body=body,
        content_type=request.headers.get("Content-Type", ""), request_id=call.request_id,
        trigger=found.route.trigger, source=request.remote, time_ms=int(time.time() * 1000)),
        principal.as_caller())


def _web(mapped: HttpResponse, extra: Mapping[str, str] | None = None) -> web.Response:
    headers = CIMultiDict(mapped.headers)
    if extra:
        headers.update(extra)
    return web.Response(status=mapped.status, body=mapped.body, headers=headers)


def _reject_response(reject: Reject, body: dict[str, Any]) -> web.Response:
    response = web.Response(body=_dumps(body), status=reject.status, content_type="application/json",
                            headers=reject.headers)
    if reject.close:
        response.force_close()
    return response


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # built once: json.dumps makes one a call


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


# ---- the aiohttp application and server ----------------------------------------------------------

GATEWAY = web.AppKey("gateway", Gateway)


def make_app(gateway: Gateway) -> web.Application:
    """The application: fixed endpoints first, then every other path to the HTTP Triggers (which change at
    run time, so they are matched by the router, not registered with aiohttp's frozen one)."""
    app = web.Application(client_max_size=gateway.limits.max_body + 1)
    app[GATEWAY] = gateway
    app.router.add_post("/invoke/{function}", gateway.handle_invoke)
    app.router.add_get("/healthz", gateway.handle_health)
    app.router.add_get("/readyz", gateway.handle_ready)
    app.router.add_get("/metrics", gateway.handle_metrics)
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
