"""The gateway's HTTP side: `POST /invoke/NAME`, the HTTP Trigger routes, /healthz, /readyz and /metrics
(aiohttp's server is imported here, in `gatewayrequest` and in `serve`, nowhere else).

Every request goes: request id → function → authenticate → authorize (by the function's live access rules) →
pick a revision (router; pinning is a privilege of its own) → body, read in full (size limit, own deadline) →
per-function concurrency unit → instance pool (with a deadline) → response. Each request, refused or not (an
unknown route and a wrong method included), is audited exactly once, and each one that reached a revision is
measured. Nothing a client sends ends in a traceback: bad input is a 4xx with a one-line reason, and an
unexpected failure a 500 logged as one line. The routing table is re-read
from the store in the background, so `fnctl apply` / `rollback` take effect without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from fnctl.data.errors import DataError
from fnctl.gateway import router
from fnctl.gateway.auth import (
    ANONYMOUS,
    WWW_AUTHENTICATE,
    Principal,
    PrincipalKind,
    Unauthenticated,
    authorize,
    may_pin,
)
from fnctl.gateway.datacalls import caller_of
from fnctl.gateway.httpevent import (
    FAILURE_STATUS,
    audit_outcome,
    invoke_response,
    trigger_response,
)
from fnctl.gateway.metrics import CONTENT_TYPE as METRICS_TYPE
from fnctl.gateway.pools import Overloaded, PoolResult, Unavailable
from fnctl.gateway.request import (
    NO_HEADERS,
    Call,
    GatewayLimits,
    Reject,
    build_event,
    check_header_size,
    dumps,
    new_request_id,
    reject_response,
    request_id,
    web_response,
)
from fnctl.gateway.table import TableFollower, TableSource
from fnctl.invocation.outcome import Failure, Outcome

__all__ = ["GATEWAY", "Gateway", "GatewayLimits", "make_app"]

if TYPE_CHECKING:  # the real ones; the tests pass fakes of the same shape
    from fnctl.gateway.audit import AuditLog
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.broker import Broker
    from fnctl.gateway.metrics import Metrics
    from fnctl.gateway.pools import PoolManager

log = logging.getLogger("fnctl.gateway")
PIN_HEADER = "X-Fnctl-Revision"
_REVISION_NUMBER = re.compile(r"[0-9]{1,9}\Z")  # ASCII digits only: str.isdigit() takes "²", int() does not
PIN_DENIED = (f"pinning a revision ({PIN_HEADER}) needs a Policy that grants one of the caller's roles "
              "`pin` on this function")
# Fixed endpoints and the methods they answer: another method on them is a 405, not a 404.
_FIXED = {"/healthz": "GET, HEAD", "/readyz": "GET, HEAD", "/metrics": "GET, HEAD"}
DEADLINE_TICK = 0.05  # seconds: how late a 504 may be
LOG_HEADER = "X-Fnctl-Log"  # `tail`: the response carries the invocation's last log lines (like Lambda's LogType)


class Gateway:
    """The request pipeline and the endpoints; `make_app` mounts them on an aiohttp application."""

    def __init__(self, *, pool: PoolManager, authenticator: Authenticator, metrics: Metrics, audit: AuditLog,
                 source: TableSource, limits: GatewayLimits = GatewayLimits(),
                 identity: Mapping[str, str] | None = None, broker: Broker | None = None) -> None:
        self.pool, self.authenticator, self.metrics, self.audit = pool, authenticator, metrics, audit
        self.broker = broker  # the data plane's side of the instances' `call` frames (None: no data plane)
        self.limits = limits
        self.tables = TableFollower(source, pool, limits.reload_interval)
        self.identity = dict(identity or {})
        self.pool_ready = False
        self.draining = False
        self._active: dict[str, int] = {}
        self._deadlines: dict[asyncio.Task[Any], float] = {}  # requests waiting on the pool: their deadline
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._measured: set[tuple[str, int]] = set()  # pools whose gauges /metrics shows

    @property
    def table(self) -> router.Table | None:
        return self.tables.table

    @property
    def inflight(self) -> int:
        """Requests holding a concurrency unit: their body is in, they are in the pool."""
        return sum(self._active.values())

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
        call = Call(request_id(request), request.match_info["function"], None, request.remote)
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
                response = web.Response(body=_encode_result(outcome.result), headers=extra)
            else:
                logs = request.headers.get(LOG_HEADER, "").lower() == "tail"
                response = web_response(invoke_response(outcome, logs), extra)
        except Reject as reject:
            call.outcome = reject.outcome
            response = reject_response(reject, {"error": reject.reason, "requestId": call.request_id})
        except Exception as exc:  # noqa: BLE001 -- a bug must cost one request a 500 and one log line, never a traceback
            response = self._internal_error(call, exc, {"error": "Internal Server Error", "requestId": call.request_id})
        return await self._finish(call, request, response)

    async def handle_trigger(self, request: web.Request) -> web.StreamResponse:
        """Any other path: the HTTP Trigger whose method and path match, as a proxy event and back."""
        table = self.table or router.EMPTY
        path = request.raw_path.partition("?")[0]
        found = router.match(table.http, request.method, path)
        if not isinstance(found, router.RouteMatch):
            # No function: audited under the empty name, like any other request (a scan shows up in the audit).
            call = Call(request_id(request), "", None, request.remote)
            allowed = ", ".join(sorted(found.allowed)) if found else _fixed_methods(path)
            if allowed:
                call.outcome, status, reason = "not_allowed", 405, "Method Not Allowed"
            else:
                call.outcome, status, reason = "not_found", 404, "Not Found"
            response = web.json_response({"message": reason}, status=status,
                                         headers={"Allow": allowed} if allowed else None)
            return await self._finish(call, request, response)
        call = Call(request_id(request), found.route.function, found.route.trigger, request.remote)
        try:
            result, _ = await self._dispatch(request, call, found)
            call.outcome, call.cold_start = audit_outcome(result.outcome), result.cold_start
            response = web_response(trigger_response(result.outcome))
        except Reject as reject:
            call.outcome = reject.outcome
            response = reject_response(reject, {"message": reject.reason})
        except Exception as exc:  # noqa: BLE001 -- as in handle_invoke
            response = self._internal_error(call, exc, {"message": "Internal server error"})
        return await self._finish(call, request, response)

    def _internal_error(self, call: Call, exc: Exception, body: dict[str, Any]) -> web.Response:
        """A 500 for what no check foresaw: logged as one line (type and message), no traceback anywhere."""
        log.error("request %s: internal error: %s: %s", call.request_id, type(exc).__name__,
                  str(exc).splitlines()[0][:200] if str(exc) else "")
        call.outcome = "internal"
        response = web.Response(body=dumps(body), status=500, content_type="application/json")
        response.force_close()
        return response

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "draining" if self.draining else "ok", **self.identity})

    async def handle_ready(self, request: web.Request) -> web.StreamResponse:
        ready = self.table is not None and self.pool_ready and not self.draining
        body = {"status": "ready" if ready else "draining" if self.draining else "starting",
                "functions": len(self.table.functions) if self.table else 0}
        return web.json_response(body, status=200 if ready else 503)

    async def handle_metrics(self, request: web.Request) -> web.StreamResponse:
        pools = self.pool.stats()
        for (function, revision), stats in pools.items():
            self.metrics.set_instances(function, revision, stats.instances)
        for function, revision in self._measured - pools.keys():  # pools gone: their gauges go too
            self.metrics.forget(function, revision)
        self._measured = set(pools)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_TYPE})

    # ---- the steps of one request ----

    async def _dispatch(self, request: web.Request, call: Call,
                        found: router.RouteMatch | None) -> tuple[PoolResult, int]:
        table = self.tables.table or router.EMPTY
        function = table.functions.get(call.function)
        if function is None:
            raise Reject(404, "Not Found", "not_found")
        check_header_size(request, self.limits.max_header)
        call.principal = principal = self._authenticate(request, call)
        # Access is the function's as declared now (its newest revision with traffic, and the live Policies),
        # whichever revision serves: an old revision's looser rules never come back through a pin.
        governing = function.access
        if governing is None:
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"})
        if not authorize(principal, governing.roles, table.policies, call.function):
            raise self._denied(call, principal)
        revision = self._pick(function, request, principal, table.policies, call)
        info = function.revisions.get(revision)
        if info is None:  # a weight on a revision that is no longer invocable (failed, quarantined)
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"})
        call.revision = revision
        # The body is read in full before the request takes anything shared (a concurrency unit, a pool slot
        # or queue place): a client that sends it slowly, or never finishes, holds its own connection only,
        # and only until bodyTimeout.
        body = await self._read_body(request, min(self.limits.max_body, info.payload))
        event = build_event(request, body, call, found, principal)
        active = self._active.get(call.function, 0)
        if active >= self.limits.max_concurrent:
            raise Reject(429, "Too Many Requests", "overloaded", headers={"Retry-After": "1"})
        self._active[call.function] = active + 1
        try:
            return await self._run(call, info, event, principal), revision
        finally:
            self._active[call.function] -= 1

    def _denied(self, call: Call, principal: Principal, why: str | None = None) -> Reject:
        """401 for an anonymous caller, else 403; `why` is said only where it reveals nothing (pinning)."""
        status = 401 if principal.kind is PrincipalKind.ANONYMOUS else 403
        self.metrics.denied(call.function, status)
        reason = "Unauthorized" if status == 401 else "Forbidden"
        return Reject(status, f"{reason}: {why}" if why else reason, "unauthenticated" if status == 401 else "denied",
                      headers={"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else None)

    def _authenticate(self, request: web.Request, call: Call) -> Principal:
        try:
            return self.authenticator.authenticate(request.headers)
        except Unauthenticated as exc:
            log.debug("request %s: authentication failed: %s", call.request_id, exc.reason)
            call.principal = ANONYMOUS
            self.metrics.denied(call.function, 401)
            raise Reject(401, "Unauthorized", "unauthenticated", headers={"WWW-Authenticate": WWW_AUTHENTICATE}) from None

    def _pick(self, function: router.FunctionRoute, request: web.Request, principal: Principal,
              policies: Mapping[str, Mapping[str, Any]], call: Call) -> int:
        pinned_text = request.headers.get(PIN_HEADER)
        pinned = None
        if pinned_text is not None:
            if not _REVISION_NUMBER.match(pinned_text.strip()):
                raise Reject(400, f"Bad Request: {PIN_HEADER} must be a revision number", "rejected")
            if not may_pin(principal, policies, function.name):
                raise self._denied(call, principal, PIN_DENIED)
            pinned = int(pinned_text)
            if not function.holds(pinned):  # gone from the routing table (or never there): history only
                raise Reject(404, f"Not Found: {function.name} has no revision {pinned} in its routing table",
                             "not_found")
        # Usually no stickiness: a random split, or one revision.
        sticky = None if function.sticky_by is None else _sticky_value(function, request, principal)
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
            return request.content.read_nowait()  # all in already (the usual small body): no awaiting at all
        try:
            async with asyncio.timeout(self.limits.body_timeout):
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
            raise Reject(408, "Request Timeout: the body did not arrive within the gateway's bodyTimeout", "rejected",
                         close=True) from None
        except (asyncio.IncompleteReadError, ConnectionError, HttpProcessingError):
            # the client closed mid-body, or sent a malformed chunked encoding (aiohttp's parser refused it)
            raise Reject(400, "Bad Request: the body ended early or is malformed", "rejected", close=True) from None

    async def _run(self, call: Call, info: router.RevisionInfo, event: Any, principal: Principal) -> PoolResult:
        """One invocation, with its data session when the gateway serves data: the caller, budget and (for a
        procedure) transaction its `context.db` calls use. A procedure's writes are committed when the handler
        returned ok, and dropped when it failed, timed out or went over a limit; on a conflict it is run again
        when that is safe (no egress), up to `retries` times, else answered 409."""
        broker = self.broker
        if broker is None:
            return await self._call_pool(call, info, event, principal.as_caller(), call.request_id)
        settings = info.data
        caller = caller_of(principal)
        attempts = 1 + (settings.retries if settings.rerunnable else 0)
        for attempt in range(attempts):
            # The request id, unless a request in flight already uses it (a client may choose it) or this is a
            # re-run: a session is found by its invocation id, which must name one invocation only.
            invocation = call.request_id if attempt == 0 and call.request_id not in broker.sessions else new_request_id()
            assert call.revision is not None
            session = broker.open(invocation, call.function, call.revision, caller, settings)
            try:
                result = await self._call_pool(call, info, event, principal.as_caller(), invocation)
                if session.exceeded is not None:  # caught by the handler or not, a limit fails the invocation
                    raise Reject(429, f"Too Many Requests: LimitExceeded: {session.exceeded.detail_text}",
                                 "error")
                if session.txn is None:
                    return result
                try:
                    if session.conflict is not None:  # a read went stale during the run: it cannot commit
                        raise session.conflict
                    if not result.outcome.ok:
                        return result  # a failed procedure's buffered writes are dropped with its session
                    await broker.commit(session)
                except DataError as error:
                    if error.status == 409 and attempt + 1 < attempts:
                        continue
                    raise Reject(error.status, f"{error.title}: {error.detail_text}",
                                 "error") from None
                return result
            finally:
                broker.close(invocation)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _call_pool(self, call: Call, info: router.RevisionInfo, event: Any,
                         caller: dict[str, Any], invocation: str) -> PoolResult:
        assert call.revision is not None
        self.metrics.inflight(call.function, call.revision, 1)
        task = asyncio.current_task()
        assert task is not None
        self._deadlines[task] = time.monotonic() + info.timeout + self.limits.timeout_margin
        try:
            return await self.pool.invoke(call.function, call.revision, event, caller=caller,
                                          request_id=invocation)
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

    def refused(self, request: BaseRequest, status: int, outcome: str) -> None:
        """Audit a request the HTTP server refused before any handler saw it (it is not valid HTTP)."""
        self.audit.record(request_id=new_request_id(), principal=None, function="", revision=None, outcome=outcome,
                          status=status, duration_ms=0.0, source=request.remote,
                          access={"method": request.method, "path": request.path})

    # ---- invocations that do not come over HTTP (cron) ----

    async def invoke_internal(self, function: str, event: Any, *, trigger: str) -> tuple[int, Outcome | None]:
        """Run `function` for a trigger of the gateway itself (cron): routed, measured and audited like any
        request, as the principal `trigger:<name>` with no roles. Returns (status, outcome or None)."""
        call = Call(new_request_id(), function, trigger, None)
        call.principal = Principal(f"trigger:{trigger}", (), None, PrincipalKind.ANONYMOUS)
        outcome: Outcome | None = None
        try:
            route = (self.table or router.EMPTY).functions.get(function)
            if route is None:
                raise Reject(404, "Not Found", "not_found")
            call.revision = self._pick(route, NO_HEADERS, call.principal, {}, call)
            info = route.revisions.get(call.revision)
            if info is None:
                raise Reject(503, "Service Unavailable", "unavailable")
            outcome = (await self._run(call, info, event, call.principal)).outcome
            status = 200 if outcome.ok else FAILURE_STATUS.get(outcome.failure or Failure.HANDLER_ERROR, 500)
            call.outcome = audit_outcome(outcome)
        except Reject as reject:
            status, call.outcome = reject.status, reject.outcome
        await self._finish(call, None, web.Response(status=status))
        return status, outcome


def _fixed_methods(path: str) -> str:
    """The methods a fixed endpoint answers ("" when `path` is none): for the Allow of a 405."""
    return "POST" if path.startswith("/invoke/") and path.count("/") == 2 else _FIXED.get(path, "")


def _encode_result(result: Any) -> bytes:
    """A handler's result as the response body. The runtime encodes results as ASCII JSON, so a lone
    surrogate escape (`"\\ud800"`) decodes here into a str that UTF-8 refuses: sent as ASCII escapes instead
    (valid JSON text, the handler's value as it gave it), never a 500."""
    try:
        return dumps(result)
    except UnicodeEncodeError:
        return _ASCII.encode(result).encode("ascii")


_ASCII = json.JSONEncoder(separators=(",", ":"))  # ensure_ascii: escapes whatever UTF-8 cannot carry


def _sticky_value(function: router.FunctionRoute, request: web.Request, principal: Principal) -> str | None:
    """What keeps a caller on one revision of `function`: its subject, a header's or a cookie's value."""
    by, name = function.sticky_by, function.sticky_name
    if by is router.StickyBy.CALLER and principal.kind is not PrincipalKind.ANONYMOUS:
        return principal.subject
    if by is router.StickyBy.HEADER and name:
        return request.headers.get(name)
    if by is router.StickyBy.COOKIE and name:
        return request.cookies.get(name)
    return None


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
    if gateway.broker is not None:
        from fnctl.gateway.dataapi import DataApi  # only with a data plane (it imports the data plane's modules)

        DataApi(gateway, gateway.broker).add_routes(app)
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
