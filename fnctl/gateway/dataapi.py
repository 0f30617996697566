"""The REST data API under `/v1/`, on the gateway's aiohttp application, with the same authentication as
invocations: documents of a collection (list with filter/order/limit/cursor, get with its ETag, insert with an
Idempotency-Key, replace / merge-patch / delete with If-Match), `POST /v1/batch` (all or nothing), the change
feed `GET /v1/changes?since=N` (what the caller may read) and `GET /v1/openapi.json`.

Every decision (rights, tenant, schema, versions, limits) is the data plane's (`fnctl.data.plane`); this
module parses HTTP, calls it on the broker's data thread (a GET of one document: on the event loop, a single
primary-key read on a connection of its own), and renders its errors as application/problem+json
(RFC 9457). Every request is audited like an invocation; every write is in the change log.

Each endpoint takes either server's request (`Incoming`) and gives a `Reply`: aiohttp's routes serve them all,
and the lean request path (`fnctl.gateway.lean`) serves the two the data plane's speed figures are about, a GET
of one document and a POST of one (`lean_route`), with the same code from authentication to audit.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from fnctl.data.caller import Caller
from fnctl.data.documents import DEFAULT_LIMIT, MAX_LIMIT, DataDocument, WriteOp
from fnctl.data.errors import DataError, problem_document
from fnctl.gateway.auth import ANONYMOUS, WWW_AUTHENTICATE, Principal, PrincipalKind, Unauthenticated
from fnctl.gateway.datacalls import caller_of
from fnctl.gateway.openapi import MERGE_PATCH, PROBLEM_TYPE, openapi_document
from fnctl.gateway.request import Call, Incoming, LeanRequest, Reject, Reply, check_header_size, dumps, request_id
from fnctl.invocation import strictjson

if TYPE_CHECKING:
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.broker import Broker
    from fnctl.gateway.request import GatewayLimits


class GatewayFacade(Protocol):
    """What the API uses of `fnctl.gateway.app.Gateway` (which mounts it): its limits, authentication, body
    reading, the audit and metrics every request ends with, and the writing of an answer by aiohttp."""

    authenticator: Authenticator
    limits: GatewayLimits

    async def _read_body(self, request: Incoming, limit: int) -> bytes: ...

    def _internal_reply(self, call: Call, exc: Exception, body: dict[str, Any]) -> Reply: ...

    def _finish_reply(self, call: Call, request: Incoming | None, reply: Reply) -> Reply: ...

    async def _respond(self, request: web.Request, reply: Reply) -> web.StreamResponse: ...


# An endpoint: the request, its path's parameters, the authenticated caller → the answer.
Endpoint = Callable[[Incoming, Mapping[str, str], Caller], Awaitable[Reply]]
# What the lean path runs for a request it took, and how it finds it (`DataApi.lean_route`).
LeanEntry = Callable[[LeanRequest], Awaitable[Reply]]
DataRoute = Callable[[str, str], LeanEntry | None]


_JSON_TYPE = ("Content-Type", "application/json")
_VERSION = re.compile(r'\A(?:W/)?"?([0-9]{1,18})"?\Z')
MAX_BATCH = 1000


class HttpProblem(Exception):
    """A 4xx the API answers itself, before the data plane (bad HTTP: query, headers, body)."""

    def __init__(self, status: int, title: str, detail: str, type_: str = "invalid") -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.type = status, title, detail, type_

    def body(self) -> dict[str, Any]:
        return problem_document(self.type, self.title, self.status, self.detail)


def problem_reply(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None, close: bool = False
) -> Reply:
    all_headers = CIMultiDict(headers or {})
    all_headers["Content-Type"] = PROBLEM_TYPE
    return Reply(status, all_headers, dumps(dict(body)), close)


def json_body(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    """JSON the API encoded itself, as `web.Response(body=..., content_type="application/json")` answers."""
    all_headers = CIMultiDict(headers or {})
    all_headers["Content-Type"] = "application/json"
    return Reply(status, all_headers, body)


def parse_version(text: str | None, header: str) -> int | None:
    """An If-Match value: a version number, quoted as an ETag or bare; `*` means any version (None)."""
    if text is None or text.strip() == "*":
        return None
    match = _VERSION.match(text.strip())
    if match is None:
        raise HttpProblem(400, "Bad Request", f'{header} must be a document version (an ETag such as "3")')
    return int(match.group(1))


def etag(version: int) -> str:
    return f'"{version}"'


def parse_json(body: bytes | str, what: str = "the body") -> Any:
    try:
        return strictjson.loads(body)
    except strictjson.NotJson as exc:
        raise HttpProblem(400, "Bad Request", f"{what} is not JSON: {exc}") from None


def parse_int(query: Mapping[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    text = query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise HttpProblem(400, "Bad Request", f"{name} must be a whole number from {low} to {high}")
    return int(text)


def parse_order(text: str | None) -> list[str] | None:
    """`order=customer,-createdAt`: fields, `-` for descending (the data plane checks they are indexed)."""
    if text is None:
        return None
    fields = [part.strip() for part in text.split(",")]
    if not all(fields):
        raise HttpProblem(400, "Bad Request", "order is a comma-separated list of fields (`-field`: descending)")
    return fields


class DataApi:
    """The `/v1/` handlers; `add_routes` mounts them (before the gateway's catch-all route), `lean_route`
    hands two of them to the lean path."""

    def __init__(self, gateway: GatewayFacade, broker: Broker) -> None:
        self.gateway, self.broker = gateway, broker
        self.plane = broker.plane

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/openapi.json", self._wrap(self.openapi))
        r.add_get("/v1/changes", self._wrap(self.changes))
        r.add_post("/v1/batch", self._wrap(self.batch))
        r.add_get("/v1/collections/{collection}/docs", self._wrap(self.find))
        r.add_post("/v1/collections/{collection}/docs", self._wrap(self.insert))
        r.add_get("/v1/collections/{collection}/docs/{id}", self._wrap(self.get))
        r.add_put("/v1/collections/{collection}/docs/{id}", self._wrap(self.replace))
        r.add_patch("/v1/collections/{collection}/docs/{id}", self._wrap(self.patch))
        r.add_delete("/v1/collections/{collection}/docs/{id}", self._wrap(self.delete))

    def lean_route(self, method: str, path: str) -> LeanEntry | None:
        """The endpoint the lean path runs for `method path` (its path never percent-encoded), as aiohttp's
        router would pick it: `GET /v1/collections/{collection}/docs/{id}` and `POST
        /v1/collections/{collection}/docs`; None for every other request (aiohttp's, HEAD included)."""
        if method == "GET":
            parts, endpoint = 6, self.get
        elif method == "POST":
            parts, endpoint = 5, self.insert
        else:
            return None
        segments = path.split("/")
        if len(segments) != parts or segments[1:3] != ["v1", "collections"] or segments[4] != "docs":
            return None
        # aiohttp's {name} matches [^{}/]+: an empty segment or a brace is not these routes
        if not segments[3] or "{" in path or "}" in path or (parts == 6 and not segments[5]):
            return None
        params = {"collection": segments[3], "id": segments[5]} if parts == 6 else {"collection": segments[3]}
        return lambda request: self._serve(request, endpoint, params)

    # ---- the pipeline every request goes through ----

    def _wrap(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.gateway._respond(request, await self._serve(request, endpoint, request.match_info))

        return handler

    async def _serve(self, request: Incoming, endpoint: Endpoint, params: Mapping[str, str]) -> Reply:
        """Authenticate, run the endpoint, answer its failures as problems; audited and measured once."""
        call = Call(request_id(request), "", None, request.remote)
        principal = ANONYMOUS
        try:
            check_header_size(request, self.gateway.limits.max_header)
            principal = self._authenticate(request, call)
            reply = await endpoint(request, params, caller_of(principal))
        except DataError as error:
            if error.status == 403 and principal.kind is PrincipalKind.ANONYMOUS:
                # as for invocations: an anonymous caller is told to authenticate, not that it may not
                call.outcome = "unauthenticated"
                reply = problem_reply(
                    401,
                    problem_document("unauthenticated", "Unauthorized", 401, "authenticate to write here"),
                    {"WWW-Authenticate": WWW_AUTHENTICATE},
                )
            else:
                call.outcome = "rejected" if error.status < 500 else "unavailable"
                wait = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
                reply = problem_reply(error.status, error.problem(), wait)
        except HttpProblem as problem:
            call.outcome = "rejected"
            reply = problem_reply(problem.status, problem.body())
        except Reject as reject:
            call.outcome = reject.outcome
            reply = problem_reply(
                reject.status,
                problem_document(reject.outcome, reject.reason, reject.status),
                reject.headers,
                reject.close,
            )
        except Exception as exc:  # noqa: BLE001 -- as in the invocation handlers: a 500, one log line
            reply = self.gateway._internal_reply(call, exc, problem_document("internal", "Internal Server Error", 500))
            reply.headers["Content-Type"] = PROBLEM_TYPE
        return self.gateway._finish_reply(call, request, reply)

    def _authenticate(self, request: Incoming, call: Call) -> Principal:
        try:
            principal = self.gateway.authenticator.authenticate(request.headers)
        except Unauthenticated:
            call.principal = ANONYMOUS
            raise Reject(
                401, "Unauthorized", "unauthenticated", headers={"WWW-Authenticate": WWW_AUTHENTICATE}
            ) from None
        call.principal = principal
        return principal

    async def _body(self, request: Incoming, *, media: tuple[str, ...] = ("application/json",)) -> Any:
        content_type, has_body = _media(request)
        if content_type not in media and has_body:
            raise HttpProblem(
                415, "Unsupported Media Type", f"the body must be {' or '.join(media)}", "unsupported-media-type"
            )
        body = await self.gateway._read_body(request, self.gateway.limits.max_body)
        return parse_json(body)

    async def _write(
        self, caller: Caller, op: WriteOp, *, key: str | None = None, required: bool = False
    ) -> list[DataDocument | None]:
        """One write: with its data hooks when it has any (`fnctl.gateway.hooks`), else grouped with the
        writes that queue up meanwhile (`Broker.write`)."""
        hooks = self.broker.hooks
        if hooks is not None and hooks.applies(op.collection, op.op):
            return await hooks.commit_writes(caller, [op], idempotency_key=key, require_if_match=required)
        return await self.broker.write(
            lambda: self.plane.stage(caller, op, idempotency_key=key, require_if_match=required)
        )

    @staticmethod
    def _document(document: DataDocument) -> Reply:
        return Reply(200, CIMultiDict((("ETag", document.etag), _JSON_TYPE)), document.json_text().encode("utf-8"))

    # ---- endpoints ----

    async def get(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        collection, id_ = params["collection"], params["id"]
        if caller.kind in ("function", "operator"):  # audited reads: the audit sink lives on the data thread
            version, text = await self.broker.run(lambda: self.plane.get_text(caller, collection, id_))
        else:
            # One primary-key SELECT on the event loop's own connection (WAL: a reader never waits for the
            # writer), with the same checks: cheaper than the hop to the data thread and back.
            version, text = self.plane.get_text(caller, collection, id_)
        tag = etag(version)
        if_none = request.headers.get("If-None-Match")
        if if_none is not None and tag in (v.strip() for v in if_none.split(",")):
            return Reply(304, CIMultiDict({"ETag": tag}), b"")
        return json_body(text.encode("utf-8"), headers={"ETag": tag})

    async def find(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        collection, query = params["collection"], request.query
        raw = query.get("filter")
        filter_ = parse_json(raw, "filter") if raw is not None else {}
        order = parse_order(query.get("order")) or ()
        limit = parse_int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        assert limit is not None
        cursor = query.get("cursor") or None
        page = await self.broker.run(
            lambda: self.plane.find(caller, collection, filter_, order=order, limit=limit, cursor=cursor)
        )
        return json_body(dumps(page.as_json()))

    async def insert(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        collection = params["collection"]
        document = await self._body(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise HttpProblem(400, "Bad Request", "Idempotency-Key must be 1 to 255 characters")
        id_ = request.query.get("id") if "?" in request.raw_path else None  # no query string to parse
        made = _one(await self._write(caller, WriteOp("insert", collection, id_, document), key=key))
        location = ("Location", f"/v1/collections/{collection}/docs/{made.id}")
        return Reply(201, CIMultiDict((("ETag", made.etag), location, _JSON_TYPE)), made.json_text().encode("utf-8"))

    @staticmethod
    def _if_match(request: Incoming) -> tuple[int | None, bool]:
        """(the If-Match version, whether one is required): `*` means any version; none at all is a 428."""
        text = request.headers.get("If-Match")
        if text is not None and text.strip() == "*":
            return None, False
        return parse_version(text, "If-Match"), True

    async def replace(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        collection, id_ = params["collection"], params["id"]
        version, required = self._if_match(request)
        document = await self._body(request)
        op = WriteOp("replace", collection, id_, document, version)
        return self._document(_one(await self._write(caller, op, required=required)))

    async def patch(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        collection, id_ = params["collection"], params["id"]
        version, required = self._if_match(request)
        patch = await self._body(request, media=(MERGE_PATCH, "application/json"))
        made = _one(await self._write(caller, WriteOp("patch", collection, id_, patch, version), required=required))
        return self._document(made)

    async def delete(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        collection, id_ = params["collection"], params["id"]
        version, required = self._if_match(request)
        await self._write(caller, WriteOp("delete", collection, id_, None, version), required=required)
        return Reply(204, CIMultiDict(), b"")

    async def batch(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        ops = parse_batch(await self._body(request))
        hooks = self.broker.hooks
        if hooks is not None and any(hooks.applies(op.collection, op.op) for op in ops):
            results = await hooks.commit_writes(caller, ops)  # every op's hooks, in one transaction
        else:
            results = await self.broker.run(lambda: self.plane.batch(caller, ops))
        return json_body(dumps({"results": [None if r is None else r.as_json() for r in results]}))

    async def changes(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        since = parse_int(request.query, "since", 0, 0, 2**62)
        limit = parse_int(request.query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        assert since is not None and limit is not None
        only = request.query.get("collection") or None
        feed = await self.broker.run(lambda: self.plane.changes(caller, since, limit=limit, collection=only))
        body = {"changes": [c.as_json() for c in feed], "next": feed[-1].seq if feed else since}
        return json_body(dumps(body))

    async def openapi(self, request: Incoming, params: Mapping[str, str], caller: Caller) -> Reply:
        def collections() -> dict[str, Any]:
            return {name: self.plane.collection(name).model.schema for name in self.plane.collection_names()}

        return json_body(dumps(openapi_document(await self.broker.run(collections))))


def _media(request: Incoming) -> tuple[str, bool]:
    """(the body's media type, as aiohttp's `content_type` reads it; whether there is a body)."""
    if isinstance(request, LeanRequest):
        given = request.headers.get("Content-Type")
        media = given.partition(";")[0].strip().lower() if given else ""
        return media or "application/octet-stream", bool(request.body)
    return request.content_type, request.body_exists


def _one(results: list[DataDocument | None]) -> DataDocument:
    """The document a one-call insert / replace / patch made (an idempotent replay's too)."""
    if not results or results[0] is None:
        raise AssertionError("a write that made no document")
    return results[0]


_BATCH_OPS = ("insert", "replace", "patch", "delete")


def parse_batch(body: Any) -> list[WriteOp]:
    """`{"operations": [{"op", "collection", "id"?, "document" | "patch"?, "ifMatch"?}, ...]}` as WriteOps;
    a bad one is a 400 naming its index (nothing is written)."""
    operations = body.get("operations") if isinstance(body, dict) else None
    if not isinstance(operations, list) or not 1 <= len(operations) <= MAX_BATCH:
        raise HttpProblem(400, "Bad Request", f'the body is {{"operations": [...]}} with 1 to {MAX_BATCH} operations')
    ops = []
    for i, raw in enumerate(operations):
        where = f"operations[{i}]"
        if not isinstance(raw, dict):
            raise HttpProblem(400, "Bad Request", f"{where} must be an object")
        op, collection, id_ = raw.get("op"), raw.get("collection"), raw.get("id")
        if op not in _BATCH_OPS:
            raise HttpProblem(400, "Bad Request", f"{where}.op must be one of {', '.join(_BATCH_OPS)}")
        if not isinstance(collection, str):
            raise HttpProblem(400, "Bad Request", f"{where}.collection must be a collection's name")
        if id_ is not None and not isinstance(id_, str):
            raise HttpProblem(400, "Bad Request", f"{where}.id must be a string")
        if op != "insert" and id_ is None:
            raise HttpProblem(400, "Bad Request", f"{where}: a {op} needs the document's id")
        version = raw.get("ifMatch")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise HttpProblem(400, "Bad Request", f"{where}.ifMatch must be a document version (a whole number)")
        data = raw.get("patch") if op == "patch" else raw.get("document")
        if op != "delete" and data is None:
            raise HttpProblem(400, "Bad Request", f"{where} needs its {'patch' if op == 'patch' else 'document'}")
        ops.append(WriteOp(op, collection, id_, data, version))
    return ops
