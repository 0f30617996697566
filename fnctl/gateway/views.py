"""Views: `GET /v1/views/{name}?…`, a function's result cached until what it read changes.

The query is the event (`viewcache.query_event`), checked against the `parameters` schema of the revision
the routing weights pick (a 400 with every violation otherwise). The result is cached under the view, that
revision, the canonical arguments, the caller (`perCaller`, or roles), the tenant and the Policies' version
(`viewcache.ViewKey`): a canary's revision has entries of its own and never serves or overwrites stable's.
A miss runs the function through the gateway's invocation path (routed, measured for canary analysis and
audited like an invocation), recording every read call its handler makes through `context.db`; concurrent
misses of one key share one computation, and an error is answered but never cached.

Never stale: the data plane tells the cache of each commit's changes on the committing thread, before the
write is answered (`DataPlane.listeners`), and each view read first takes in what other processes committed
(`fnctl data`: the data file's `data_version` moved → the change log since the last seq seen).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from fnctl.data.collections import schema_check
from fnctl.data.committed import Committed
from fnctl.data.errors import problem_document
from fnctl.data.plane import committed
from fnctl.gateway import router
from fnctl.gateway.auth import ANONYMOUS, WWW_AUTHENTICATE, Principal, Unauthenticated, authorize
from fnctl.gateway.httpevent import HttpResponse, audit_outcome, invoke_response
from fnctl.gateway.openapi import PROBLEM_TYPE
from fnctl.gateway.poolhost import PoolResult
from fnctl.gateway.request import Call, Reject, check_header_size, dumps, request_id, web_response
from fnctl.gateway.viewcache import ReadSet, ViewCache, ViewKey, caller_scope, canonical_args, query_event
from fnctl.manifest.units import parse_duration

if TYPE_CHECKING:
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.broker import Broker
    from fnctl.gateway.metrics import Metrics
    from fnctl.gateway.request import GatewayLimits

log = logging.getLogger("fnctl.gateway")
DEFAULT_CACHE_BYTES = 64 * 2**20
TAIL_BATCH = 1000
TAIL_MAX = 20_000  # changes of other processes worth going through one by one; beyond, the cache starts afresh
CACHE_HEADER = "X-Fnctl-View-Cache"  # hit | miss


def problem_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(dict(body)), status=status, content_type=PROBLEM_TYPE, headers=headers)


class ViewHost(Protocol):
    """What views use of `fnctl.gateway.app.Gateway`: the table, authentication, routing and the invocation
    path, and the audit and metrics every request ends with."""

    authenticator: Authenticator
    limits: GatewayLimits
    metrics: Metrics

    @property
    def table(self) -> router.Table | None: ...

    def _denied(self, call: Call, principal: Principal, why: str | None = None) -> Reject: ...

    def _pick(
        self,
        function: router.FunctionRoute,
        request: web.Request,
        principal: Principal,
        policies: Mapping[str, Mapping[str, Any]],
        call: Call,
    ) -> int: ...

    async def _run(
        self,
        call: Call,
        info: router.RevisionInfo,
        event: Any,
        principal: Principal,
        on_read: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> PoolResult: ...

    def _internal_error(self, call: Call, exc: Exception, body: dict[str, Any]) -> web.Response: ...

    async def _finish(
        self, call: Call, request: web.Request | None, response: web.StreamResponse
    ) -> web.StreamResponse: ...


class ViewProblem(Exception):
    def __init__(self, status: int, title: str, detail: str, violations: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.violations = status, title, detail, violations

    def body(self) -> dict[str, Any]:
        kind = "invalid" if self.status == 400 else "not-found"
        return problem_document(kind, self.title, self.status, self.detail, self.violations)


@dataclass
class _Flight:
    started: int  # the cache generation it started at
    task: asyncio.Task[tuple[HttpResponse, bool]]


class Views:
    def __init__(self, gateway: ViewHost, broker: Broker, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.gateway, self.broker = gateway, broker
        self.cache = ViewCache(max_bytes)
        self._flights: dict[ViewKey, _Flight] = {}
        self._checks: dict[tuple[str, int], Callable[[Any], Any]] = {}
        self._policies: tuple[object, str, str] = (None, "", "")  # (the policies it is for, text, digest)
        self._depends: object = None  # the views mapping the cache's dependsOn are from
        store = broker.plane.store
        self._version = store.data_version()
        self._tailed = store.last_seq()
        broker.plane.listeners.append(self._learn)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/views/{name}", self.handle)

    # ---- what changed ----

    def _learn(self, changes: Sequence[Committed]) -> None:
        """A commit's changes (on the committing thread, before the write is answered)."""
        if changes and changes[0].seq == self._tailed + 1:  # in step with the log: no need to read them back
            self._tailed = max(self._tailed, changes[-1].seq)
        for view, count in self.cache.learn(changes).items():
            self.gateway.metrics.view(view, invalidations=count)

    def _catch_up(self) -> None:
        """Take in what other connections committed since the last look (cheap when nothing: one PRAGMA)."""
        store = self.broker.plane.store
        version = store.data_version()
        if version == self._version:
            return
        self._version = version
        last = store.last_seq()
        if last - self._tailed > TAIL_MAX:  # e.g. after `fnctl data import`: cheaper to forget than to sift
            self.cache.reset()
            self._tailed = last
            return
        while True:
            rows = store.changes_after(self._tailed, TAIL_BATCH)
            if not rows:
                return
            self._tailed = max(self._tailed, rows[-1].seq)
            self._learn([committed(row) for row in rows])

    # ---- the endpoint ----

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        call = Call(request_id(request), "", f"view:{name}", request.remote)
        try:
            response = await self._answer(request, call, name)
        except Reject as reject:
            call.outcome = reject.outcome
            response = problem_response(
                reject.status,
                problem_document(reject.outcome, reject.reason, reject.status),
                reject.headers,
            )
        except ViewProblem as problem:
            call.outcome = "rejected"
            response = problem_response(problem.status, problem.body())
        except Exception as exc:  # noqa: BLE001 -- as in the invocation handlers: a 500, one log line
            response = self.gateway._internal_error(
                call, exc, problem_document("internal", "Internal Server Error", 500)
            )
            response.content_type = PROBLEM_TYPE
        return await self.gateway._finish(call, request, response)

    async def _answer(self, request: web.Request, call: Call, name: str) -> web.StreamResponse:
        gateway = self.gateway
        table = gateway.table or router.EMPTY
        spec = table.views.get(name)
        if spec is None:
            raise ViewProblem(404, "Not found", f"no view {name!r}")
        call.function = function = str(spec.get("function", ""))
        check_header_size(request, gateway.limits.max_header)
        principal = self._authenticate(request, call)
        route = table.functions.get(function)
        if route is None or route.access is None:
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"})
        if not authorize(principal, route.access.roles, table.policies, function):
            raise gateway._denied(call, principal)
        revision = gateway._pick(route, request, principal, table.policies, call)
        info = route.revisions.get(revision)
        if info is None:
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"})
        event = query_event(list(request.query.items()), info.parameters)
        violations = tuple(self._check(function, info)(event))
        if violations:
            raise ViewProblem(
                400, "Invalid request", f"the arguments do not match the parameters of {function!r}", violations
            )
        self._catch_up()
        key = self._key(name, spec, table, revision, event, principal)
        headers = {"X-Fnctl-Revision": str(revision), "X-Request-Id": call.request_id}
        body = self.cache.get(key, time.monotonic())
        if body is not None:
            gateway.metrics.view(name, hits=1)
            call.outcome = "ok"  # a hit runs nothing: not measured as an invocation of the revision
            headers[CACHE_HEADER] = "hit"
            return web.Response(body=body, content_type="application/json", headers=headers)
        call.revision = revision
        flight = self._flights.get(key)
        if flight is None or self.cache.changed_since(flight.started):
            # No computation of this key, or only one that began before a change it may have missed: a reader
            # that comes after a write acknowledged must not be handed what was computed before it.
            task = asyncio.ensure_future(self._compute(call, info, event, principal, key, spec))
            flight = self._flights[key] = _Flight(self.cache.start(), task)
            task.add_done_callback(lambda _: self._land(key, flight))
        result, ok = await asyncio.shield(flight.task)
        call.outcome = "ok" if ok else "error"
        headers[CACHE_HEADER] = "miss"
        return web_response(result, headers)

    def _land(self, key: ViewKey, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved: its readers may all have gone (they were answered or not)

    async def _compute(
        self, call: Call, info: router.RevisionInfo, event: Any, principal: Principal, key: ViewKey, spec: Any
    ) -> tuple[HttpResponse, bool]:
        started = self.cache.start()
        reads = ReadSet()

        def on_read(method: str, params: Mapping[str, Any]) -> None:
            collection = params.get("collection")
            if not isinstance(collection, str):
                return
            if method == "db.get":
                reads.get(collection, str(params.get("id")))
            else:
                reads.find(collection, params.get("filter"))

        self.gateway.metrics.view(key.view, misses=1)
        result = await self.gateway._run(call, info, event, principal, on_read)
        outcome = result.outcome
        call.cold_start = result.cold_start
        response = invoke_response(outcome, False)
        if outcome.ok:
            ttl = _ttl(spec)
            self.cache.put(key, response.body, reads, started, None if ttl is None else time.monotonic() + ttl)
        return response, audit_outcome(outcome) == "ok"

    def _authenticate(self, request: web.Request, call: Call) -> Principal:
        try:
            call.principal = self.gateway.authenticator.authenticate(request.headers)
        except Unauthenticated:
            call.principal = ANONYMOUS
            raise Reject(
                401, "Unauthorized", "unauthenticated", headers={"WWW-Authenticate": WWW_AUTHENTICATE}
            ) from None
        return call.principal

    def _check(self, function: str, info: router.RevisionInfo) -> Callable[[Any], Any]:
        check = self._checks.get((function, info.number))
        if check is None:
            check = self._checks[(function, info.number)] = schema_check(info.parameters)
        return check

    def _key(
        self, name: str, spec: Any, table: router.Table, revision: int, event: Any, principal: Principal
    ) -> ViewKey:
        if self._policies[0] is not table.policies:
            text = json.dumps(table.policies, sort_keys=True, separators=(",", ":"))
            self._policies = (table.policies, text, hashlib.blake2b(text.encode(), digest_size=8).hexdigest())
        if self._depends is not table.views:
            if self._depends is not None and self._depends != table.views:
                # A view changed (its function, dependsOn, cache): entries made under the old definition could
                # collide with the new one's keys (revisions are numbered per function), so none is kept.
                self.cache.clear()
            self._depends = table.views
            self.cache.set_depends({v: tuple(s.get("dependsOn") or ()) for v, s in table.views.items()})
        cache = spec.get("cache") if isinstance(spec, Mapping) else None
        per_caller = bool(cache.get("perCaller")) if isinstance(cache, Mapping) else False
        return ViewKey(
            name,
            revision,
            canonical_args(event),
            caller_scope(per_caller, principal.audit_name, principal.roles, self._policies[1]),
            principal.tenant or "",
            self._policies[2],
        )


def _ttl(spec: Any) -> float | None:
    cache = spec.get("cache") if isinstance(spec, Mapping) else None
    ttl = cache.get("ttl") if isinstance(cache, Mapping) else None
    if ttl is None:
        return None
    try:
        return parse_duration(ttl) if isinstance(ttl, str) else float(ttl)
    except (TypeError, ValueError):
        log.warning("view cache ttl %r is not a duration: kept without one", ttl)
        return None
