"""The gateway's request pipeline: from a request's function to its instance pool (authenticate, authorize,
pick a revision, read the body, a per-function concurrency unit, a data session, a deadline), each step
raising `Reject` with the answer when it refuses. `fnctl.gateway.app` builds the endpoints on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp.http_exceptions import HttpProcessingError

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
from fnctl.gateway.forward import HOP_HEADER, Forwarder, Relayed
from fnctl.gateway.poolhost import Overloaded, PoolResult, Unavailable
from fnctl.gateway.request import (
    Call,
    GatewayLimits,
    Incoming,
    LeanRequest,
    Reject,
    build_event,
    check_header_size,
    overloaded,
)
from fnctl.gateway.shedding import Shed
from fnctl.gateway.table import TableFollower, TableSource
from fnctl.invocation.protocol import EncodedJson
from fnctl.invocation.requestid import new_request_id

__all__ = ["DEADLINE_TICK", "PIN_HEADER", "RequestPipeline"]

if TYPE_CHECKING:  # the real ones; the tests pass fakes of the same shape
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.broker import Broker
    from fnctl.gateway.metrics import Metrics
    from fnctl.gateway.pools import PoolManager

log = logging.getLogger("fnctl.gateway")
PIN_HEADER = "X-Fnctl-Revision"
_REVISION_NUMBER = re.compile(r"[0-9]{1,9}\Z")  # ASCII digits only: str.isdigit() takes "²", int() does not
PIN_DENIED = (
    f"pinning a revision ({PIN_HEADER}) needs a Policy that grants one of the caller's roles `pin` on this function"
)
DEADLINE_TICK = 0.05  # seconds: how late a 504 may be (deadlines closer than this share one wake-up)


class RequestPipeline:
    """The steps of one request, and what they share: the routing table, the per-function concurrency units and
    the requests waiting on the pool with their deadlines (one watchdog timer for all of them, armed for the
    earliest: none while no request is in flight)."""

    def __init__(
        self,
        *,
        pool: PoolManager,
        authenticator: Authenticator,
        metrics: Metrics,
        source: TableSource,
        limits: GatewayLimits,
        broker: Broker | None,
    ) -> None:
        self.pool, self.authenticator, self.metrics = pool, authenticator, metrics
        self.broker = broker  # the data plane's side of the instances' `call` frames (None: no data plane)
        self.limits = limits
        self.tables = TableFollower(source, pool, limits.reload_interval)
        self._active: dict[str, int] = {}
        self._deadlines: dict[asyncio.Task[Any], float] = {}  # requests waiting on the pool: their deadline
        self._expired: set[asyncio.Task[Any]] = set()
        self._watchdog: asyncio.TimerHandle | None = None  # armed for `_watchdog_at`, a deadline or later
        self._watchdog_at = math.inf
        # The loop `start` ran on: `asyncio.current_task()` without it asks for the running loop, a getpid()
        # system call each time (CPython 3.11's fork check)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Asked before a request's body is read: would its revision refuse it for its expected wait? (the
        # pool manager's `shed`; None: the pool alone decides, once the request reaches it)
        self.admission: Callable[[str, int], Shed | None] | None = None
        # engine = "swarm": requests for a revision with no instance on this node go to a peer that has one
        self.forwarder: Forwarder | None = None

    @property
    def table(self) -> router.Table | None:
        return self.tables.table

    @property
    def inflight(self) -> int:
        """Requests holding a concurrency unit: their body is in, they are in the pool."""
        return sum(self._active.values())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.tables.start()

    async def stop(self) -> None:
        await self.tables.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog, self._watchdog_at = None, math.inf

    # ---- the steps of one request ----

    async def _dispatch(self, request: Incoming, call: Call, found: router.RouteMatch | None) -> tuple[PoolResult, int]:
        table = self.tables.table or router.EMPTY
        function = table.functions.get(call.function)
        if function is None:
            raise Reject(404, "Not Found", "not_found")
        if not isinstance(request, LeanRequest):  # the lean path takes only heads under the limit (lean.parse)
            check_header_size(request, self.limits.max_header)
        call.principal = principal = self._authenticate(request, call)
        # Access is the function's as declared now (its newest revision with traffic, and the live Policies),
        # whichever revision serves: an old revision's looser rules never come back through a pin.
        governing = function.access
        if governing is None:
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"})
        if not authorize(principal, governing.roles, table.policies, call.function):
            raise self._denied(call, principal)
        revision = function.sole  # the usual request: one revision has the traffic, no pin (~1 us less than _pick)
        if revision is None or PIN_HEADER in request.headers:
            revision = self._pick(function, request, principal, table.policies, call)
        info = function.revisions.get(revision)
        if info is None:  # a weight on a revision that is no longer invocable (failed, quarantined)
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"})
        call.revision = revision
        if self.admission is not None and (refused := self.admission(call.function, revision)) is not None:
            # Shed before anything costly (the body, the event): under overload most requests end here.
            raise overloaded(refused.retry_after)
        # The body is read in full before the request takes anything shared (a concurrency unit, a pool slot
        # or queue place): a client that sends it slowly, or never finishes, holds its own connection only,
        # and only until bodyTimeout.
        limit = min(self.limits.max_body, info.payload)
        if isinstance(request, LeanRequest) and len(request.body) <= limit:
            body = request.body  # all in (the lean path takes only whole requests): no coroutine to await
        else:
            body = await self._read_body(request, limit)
        if self.forwarder is not None and not self.pool.holds(call.function, revision):
            # No instance here (engine = "swarm"): a live gateway that has one answers (fnctl.gateway.forward),
            # unless this request was forwarded here already; with none, this node's pool has it as before (a
            # task Swarm placed here a moment ago is being adopted).
            call.forwarded = HOP_HEADER in request.headers
            routed = [r for r, weight in function.weights.items() if weight > 0]
            peers = [] if call.forwarded else self.forwarder.peers(call.function, revision, routed)
            if peers:
                timeout = info.timeout + self.limits.timeout_margin
                raise Relayed(await self.forwarder.forward(request, body, call, peers, timeout))
        event = build_event(request, body, call, found, principal)
        active = self._active.get(call.function, 0)
        if active >= self.limits.max_concurrent:
            raise overloaded(1)
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
        return Reject(
            status,
            f"{reason}: {why}" if why else reason,
            "unauthenticated" if status == 401 else "denied",
            headers={"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else None,
        )

    def _authenticate(self, request: Incoming, call: Call) -> Principal:
        try:
            return self.authenticator.authenticate(request.headers)
        except Unauthenticated as exc:
            log.debug("request %s: authentication failed: %s", call.request_id, exc.reason)
            call.principal = ANONYMOUS
            self.metrics.denied(call.function, 401)
            raise Reject(
                401, "Unauthorized", "unauthenticated", headers={"WWW-Authenticate": WWW_AUTHENTICATE}
            ) from None

    def _pick(
        self,
        function: router.FunctionRoute,
        request: Incoming,
        principal: Principal,
        policies: Mapping[str, Mapping[str, Any]],
        call: Call,
    ) -> int:
        pinned_text = request.headers.get(PIN_HEADER)
        pinned = None
        if pinned_text is not None:
            if not _REVISION_NUMBER.match(pinned_text.strip()):
                raise Reject(400, f"Bad Request: {PIN_HEADER} must be a revision number", "rejected")
            if not may_pin(principal, policies, function.name):
                raise self._denied(call, principal, PIN_DENIED)
            pinned = int(pinned_text)
            if not function.holds(pinned):  # gone from the routing table (or never there): history only
                raise Reject(
                    404, f"Not Found: {function.name} has no revision {pinned} in its routing table", "not_found"
                )
        # Usually no stickiness: a random split, or one revision.
        sticky = None if function.sticky_by is None else _sticky_value(function, request, principal)
        try:
            return router.choose(
                function.weights, pinned=pinned, sticky_key=None if sticky is None else f"{function.name}\0{sticky}"
            )
        except router.NoRoute:
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"}) from None

    async def _read_body(self, request: Incoming, limit: int) -> bytes:
        if isinstance(request, LeanRequest):  # all in: the lean path takes only whole requests
            if len(request.body) > limit:
                raise Reject(413, "Payload Too Large", "rejected", close=True)
            return request.body
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
            raise Reject(
                408, "Request Timeout: the body did not arrive within the gateway's bodyTimeout", "rejected", close=True
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, HttpProcessingError):
            # the client closed mid-body, or sent a malformed chunked encoding (aiohttp's parser refused it)
            raise Reject(400, "Bad Request: the body ended early or is malformed", "rejected", close=True) from None

    async def _run(
        self,
        call: Call,
        info: router.RevisionInfo,
        event: Any,
        principal: Principal,
        on_read: Callable[[str, Mapping[str, Any]], None] | None = None,
        read_only: bool = False,
    ) -> PoolResult:
        """One invocation, with its data session when the gateway serves data: the caller, budget and (for a
        procedure) transaction its `context.db` calls use. A procedure's writes are committed when the handler
        returned ok, and dropped when it failed, timed out or went over a limit; on a conflict it is run again
        when that is safe (no egress), up to `retries` times, else answered 409. `on_read` is told of every
        read call the invocation makes (a view's computation records them); `read_only`: its writes are refused
        (a hook run for another node's writer, fnctl.gateway.peerinvoke)."""
        broker = self.broker
        if broker is None:
            return await self._call_pool(call, info, event, principal.encoded_caller(), call.request_id)
        settings = info.data
        caller = caller_of(principal)
        attempts = 1 + (settings.retries if settings.rerunnable else 0)
        for attempt in range(attempts):
            # The request id, unless a request in flight already uses it (a client may choose it) or this is a
            # re-run: a session is found by its invocation id, which must name one invocation only.
            invocation = call.request_id if attempt == 0 and not broker.in_flight(call.request_id) else new_request_id()
            assert call.revision is not None
            session = None
            if settings.transaction:  # the gateway commits: opened now
                session = broker.open(invocation, call.function, call.revision, caller, settings, on_read, read_only)
            else:  # no commit to make: the session is opened by the first call, if any
                broker.defer(invocation, call.function, call.revision, caller, settings, on_read, read_only)
            try:
                result = await self._call_pool(call, info, event, principal.encoded_caller(), invocation)
                opened = broker.sessions.get(invocation)
                if opened is not None and opened.exceeded is not None:  # caught by the handler or not, a limit fails it
                    raise Reject(429, f"Too Many Requests: LimitExceeded: {opened.exceeded.detail_text}", "error")
                if session is None:
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
                    raise Reject(error.status, f"{error.title}: {error.detail_text}", "error") from None
                return result
            finally:
                broker.close(invocation)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _call_pool(
        self, call: Call, info: router.RevisionInfo, event: Any, caller: EncodedJson, invocation: str
    ) -> PoolResult:
        assert call.revision is not None
        self.metrics.inflight(call.function, call.revision, 1)
        task = asyncio.current_task(self._loop)
        assert task is not None
        deadline = self._deadlines[task] = time.monotonic() + info.timeout + self.limits.timeout_margin
        if deadline < self._watchdog_at:  # usually armed already, for an earlier request's deadline
            self._arm(deadline)
        try:
            return await self.pool.invoke(call.function, call.revision, event, caller=caller, request_id=invocation)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # the client went away, or the gateway is stopping
            task.uncancel()
            raise Reject(504, "Gateway Timeout", "timeout") from None
        except Overloaded as exc:
            raise overloaded(max(1, math.ceil(exc.retry_after))) from None
        except Unavailable as exc:
            if self.forwarder is not None:  # it ran nothing here: say so, for a forwarder to try another peer
                raise self.forwarder.unavailable(call.function, call.revision, call.forwarded, str(exc)) from None
            log.warning("request %s: %s r%s unavailable: %s", call.request_id, call.function, call.revision, exc)
            raise Reject(503, "Service Unavailable", "unavailable", headers={"Retry-After": "1"}) from None
        finally:
            del self._deadlines[task]
            self._expired.discard(task)
            self.metrics.inflight(call.function, call.revision, -1)

    def _arm(self, deadline: float) -> None:
        # One timer for all requests: a timer per request (asyncio.timeout) costs more than the rest of the
        # gateway's own work on it. Armed for the earliest deadline rather than ticking every DEADLINE_TICK,
        # which woke an idle gateway 20 times a second; a request that ends leaves it armed (disarming would
        # cost each request a scan for the next deadline): it fires once, finds nothing, and stays off.
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog_at = deadline
        self._watchdog = (self._loop or asyncio.get_running_loop()).call_later(
            max(0.0, deadline - time.monotonic()), self._expire
        )

    def _expire(self) -> None:
        """Cancel the requests past their deadline (answered 504 by `_call_pool`); the timer again for the
        next deadline, if any, and at least DEADLINE_TICK from now: deadlines close together share a wake-up."""
        self._watchdog, self._watchdog_at = None, math.inf
        now, earliest = time.monotonic(), math.inf
        for task, deadline in self._deadlines.items():  # (cancel() only schedules: the dict stays as it is)
            if deadline <= now:
                if task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._arm(max(earliest, now + DEADLINE_TICK))


def _sticky_value(function: router.FunctionRoute, request: Incoming, principal: Principal) -> str | None:
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
