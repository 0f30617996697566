"""One gateway request's plumbing: its bookkeeping (`Call`), the answers the gateway gives itself (`Reject`),
request ids, the header-size check, the event built from the body, and answers (`Reply`, which either server
writes: aiohttp's or the lean path's). A request is aiohttp's `web.Request` or a `LeanRequest` of the same
shape (what the pipeline reads of it), parsed by `fnctl.gateway.lean`.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, TypeAlias
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from fnctl.gateway import router
from fnctl.gateway.auth import Principal
from fnctl.gateway.httpevent import NOT_RUN_HEADER, HttpRequest, HttpResponse, event_json
from fnctl.invocation import strictjson
from fnctl.invocation.protocol import json_text
from fnctl.invocation.requestid import new_request_id

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class GatewayLimits:
    max_body: int = 6 * 2**20  # bytes of a request body (a function's payload limit may be lower): 413
    max_header: int = 16 * 2**10  # bytes of all request headers, and of any one header line: 431
    read_timeout: float = 10.0  # seconds a client may take to send its request line and headers (and to idle)
    body_timeout: float = 5.0  # seconds a client may take to send its body, once its headers are in: 408
    timeout_margin: float = 3.0  # added to the function's timeout: queueing and a cold start; then 504
    max_concurrent: int = 256  # requests in progress per function: 429 beyond
    reload_interval: float = 0.25  # seconds between checks of the store's routing table
    drain_timeout: float = 30.0  # seconds in-flight requests get to finish on shutdown
    max_connections_per_client: int = 256  # open connections per client address; more are refused (429)
    max_queue_wait: float | None = None  # seconds a request may wait for a busy revision (None: its timeout): 429


class Reject(Exception):
    """A request answered by the gateway itself, before or instead of the function."""

    def __init__(
        self, status: int, reason: str, outcome: str, *, headers: Mapping[str, str] | None = None, close: bool = False
    ) -> None:
        super().__init__(reason)
        self.status, self.reason, self.outcome = status, reason, outcome
        self.headers = dict(headers or {})
        self.close = close


@dataclass(slots=True)
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
    forwarded: bool = False  # it came with the hop header (fnctl.gateway.forward): it is not forwarded again


class LeanRequest:
    """A request the lean path parsed whole (headers and body in): what the pipeline reads of a request, with
    the names and meaning of aiohttp's `web.Request` (its path is never percent-encoded: such a request
    takes aiohttp's path)."""

    __slots__ = (
        "method",
        "path",
        "raw_path",
        "headers",
        "raw_headers",
        "remote",
        "body",
        "keep_alive",
        "_query_string",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        raw_headers: tuple[tuple[bytes, bytes], ...],
        remote: str | None,
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method, self.raw_path, self.raw_headers = method, raw_path, raw_headers
        self.path, _, self._query_string = raw_path.partition("?")
        # decoded as aiohttp decodes them: UTF-8, bytes that are not kept as surrogate escapes
        self.headers = CIMultiDictProxy(
            CIMultiDict(
                [
                    (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                    for name, value in raw_headers
                ]
            )
        )
        self.remote, self.body, self.keep_alive = remote, body, keep_alive

    @property
    def query(self) -> MultiDictProxy[str]:
        if not self._query_string:
            return _NO_QUERY  # most requests: no parsing, no new mapping
        return MultiDictProxy(MultiDict(parse_qsl(self._query_string, keep_blank_values=True)))

    @property
    def cookies(self) -> Mapping[str, str]:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}


_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())
# What the pipeline takes: either server's request.
Incoming: TypeAlias = "web.Request | LeanRequest"


@dataclass(slots=True)
class Reply:
    """An answer, before either server writes it: `close` ends the connection after it."""

    status: int
    # A plain dict only where every name is the gateway's own, in its canonical case (the usual answers: ~0.4 us
    # less to build and write than a CIMultiDict); any header a handler or peer chose goes in a CIMultiDict.
    headers: CIMultiDict[str] | dict[str, str]
    body: bytes
    close: bool = False


class _NoHeaders:
    """A request without headers or cookies, for invocations that do not come over HTTP."""

    headers: Mapping[str, str] = {}
    cookies: Mapping[str, str] = {}


NO_HEADERS: Any = _NoHeaders()


def request_id(request: Incoming) -> str:
    given = request.headers.get("X-Request-Id")
    return given if given is not None and _REQUEST_ID.match(given) else new_request_id()


def check_header_size(request: Incoming, limit: int) -> None:
    # aiohttp limits each line; this limits their sum (many headers each under the line limit)
    raw = request.raw_headers
    size = sum(map(len, itertools.chain.from_iterable(raw))) + 4 * len(raw)  # ": " and CRLF of each line
    if size > limit:
        raise Reject(431, "Request Header Fields Too Large", "rejected", close=True)


def build_event(
    request: Incoming, body: bytes, call: Call, found: router.RouteMatch | None, principal: Principal
) -> Any:
    if found is None:  # /invoke: the body is the event
        if not body.strip():
            return {}
        try:
            return strictjson.loads(body)  # UTF-8 (RFC 8259), no NaN, no lone surrogates, bounded nesting
        except strictjson.NotJson as exc:
            raise Reject(400, f"Bad Request: the body is not JSON: {exc}", "rejected") from None
    route = found.route
    return event_json(  # as JSON text: sent in the invoke frame as it is
        HttpRequest(  # positional: made for every trigger request
            request.method,
            request.path,
            route.template,
            found.params,
            request.query.items(),
            request.headers.items(),
            body,
            request.headers.get("Content-Type", "") if body else "",  # it only says how to carry a body
            call.request_id,
            route.trigger,
            # the client's: the connection's, or the one a peer gateway forwarded and signed (forward.client_of)
            call.source,
            int(time.time() * 1000),
        ),
        principal.caller_json(),
    )


def reply_of(mapped: HttpResponse, extra: Mapping[str, str] | None = None) -> Reply:
    headers = CIMultiDict(mapped.headers)
    if extra:
        headers.update(extra)
    return Reply(mapped.status, headers, mapped.body)


RAN_NOTHING = frozenset({"unavailable", "overloaded"})  # the audit words of refusals before anything ran


def overloaded(retry_after: int | str) -> Reject:
    """A 429 of admission (shed, the function's concurrency cap, a full queue): nothing ran, as NOT_RUN_HEADER
    says, so a forwarder may try another gateway (fnctl.gateway.forward)."""
    headers = {"Retry-After": str(retry_after), NOT_RUN_HEADER: "overloaded"}
    return Reject(429, "Too Many Requests", "overloaded", headers=headers)


def reject_reply(reject: Reject, body: dict[str, Any]) -> Reply:
    headers = CIMultiDict(reject.headers)
    headers["Content-Type"] = "application/json"
    return Reply(reject.status, headers, dumps(body), reject.close)


def json_reply(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    """As aiohttp's `json_response` answers (its Content-Type names the charset)."""
    all_headers = CIMultiDict(headers or {})
    all_headers["Content-Type"] = "application/json; charset=utf-8"
    return Reply(status, all_headers, json.dumps(body).encode("utf-8"))


def web_response(mapped: HttpResponse, extra: Mapping[str, str] | None = None) -> web.Response:
    headers = CIMultiDict(mapped.headers)
    if extra:
        headers.update(extra)
    return web.Response(status=mapped.status, body=mapped.body, headers=headers)


def reply_response(reply: Reply) -> web.Response:
    """A `Reply` as aiohttp's response."""
    response = web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    if reply.close:
        response.force_close()
    return response


def dumps(value: Any) -> bytes:
    """Compact JSON, non-ASCII kept, by the C encoder made once (for results and the gateway's own answers:
    values without cycles)."""
    return json_text(value).encode("utf-8")
