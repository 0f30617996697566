"""The REST data API under `/v1/`, on the gateway's aiohttp application, with the same authentication as
invocations: documents of a collection (list with filter/order/limit/cursor, get with its ETag, insert with an
Idempotency-Key, replace / merge-patch / delete with If-Match), `POST /v1/batch` (all or nothing), the change
feed `GET /v1/changes?since=N` (what the caller may read) and `GET /v1/openapi.json`.

Every decision (rights, tenant, schema, versions, limits) is the data plane's (`fnctl.data.plane`); this
module parses HTTP, calls it on the broker's data thread (a GET of one document: on the event loop, a single
primary-key read on a connection of its own), and renders its errors as application/problem+json
(RFC 9457). Every request is audited like an invocation; every write is in the change log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from fnctl.data.caller import Caller
from fnctl.data.documents import DEFAULT_LIMIT, MAX_LIMIT, DataDocument, WriteOp
from fnctl.data.errors import PROBLEM_BASE, DataError
from fnctl.gateway.auth import ANONYMOUS, WWW_AUTHENTICATE, Principal, PrincipalKind, Unauthenticated
from fnctl.gateway.datacalls import caller_of
from fnctl.gateway.openapi import MERGE_PATCH, PROBLEM_TYPE, openapi_document
from fnctl.gateway.request import Call, Reject, check_header_size, dumps, request_id
from fnctl.invocation import strictjson

if TYPE_CHECKING:
    from fnctl.gateway.auth import Authenticator
    from fnctl.gateway.broker import Broker
    from fnctl.gateway.request import GatewayLimits


class GatewayFacade(Protocol):
    """What the API uses of `fnctl.gateway.app.Gateway` (which mounts it): its limits, authentication, body
    reading, and the audit and metrics every request ends with."""

    authenticator: Authenticator
    limits: GatewayLimits

    async def _read_body(self, request: web.Request, limit: int) -> bytes: ...

    def _internal_error(self, call: Call, exc: Exception, body: dict[str, Any]) -> web.Response: ...

    async def _finish(
        self, call: Call, request: web.Request | None, response: web.StreamResponse
    ) -> web.StreamResponse: ...


_VERSION = re.compile(r'\A(?:W/)?"?([0-9]{1,18})"?\Z')
MAX_BATCH = 1000


class HttpProblem(Exception):
    """A 4xx the API answers itself, before the data plane (bad HTTP: query, headers, body)."""

    def __init__(self, status: int, title: str, detail: str, type_: str = "invalid") -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.type = status, title, detail, type_

    def body(self) -> dict[str, Any]:
        return {"type": PROBLEM_BASE + self.type, "title": self.title, "status": self.status, "detail": self.detail}


def problem_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(dict(body)), status=status, content_type=PROBLEM_TYPE, headers=headers)


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
    """The `/v1/` handlers; `add_routes` mounts them (before the gateway's catch-all route)."""

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

    # ---- the pipeline every request goes through ----

    def _wrap(self, handler: Callable[[web.Request, Caller], Any]) -> Callable[[web.Request], Any]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            call = Call(request_id(request), "", None, request.remote)
            principal = ANONYMOUS
            try:
                check_header_size(request, self.gateway.limits.max_header)
                principal = self._authenticate(request, call)
                response: web.StreamResponse = await handler(request, caller_of(principal))
            except DataError as error:
                if error.status == 403 and principal.kind is PrincipalKind.ANONYMOUS:
                    # as for invocations: an anonymous caller is told to authenticate, not that it may not
                    call.outcome = "unauthenticated"
                    response = problem_response(
                        401,
                        {
                            "type": PROBLEM_BASE + "unauthenticated",
                            "title": "Unauthorized",
                            "status": 401,
                            "detail": "authenticate to write here",
                        },
                        {"WWW-Authenticate": WWW_AUTHENTICATE},
                    )
                else:
                    call.outcome = "rejected" if error.status < 500 else "unavailable"
                    response = problem_response(error.status, error.problem())
            except HttpProblem as problem:
                call.outcome = "rejected"
                response = problem_response(problem.status, problem.body())
            except Reject as reject:
                call.outcome = reject.outcome
                response = problem_response(
                    reject.status,
                    {"type": PROBLEM_BASE + reject.outcome, "title": reject.reason, "status": reject.status},
                    reject.headers,
                )
                if reject.close:
                    response.force_close()
            except Exception as exc:  # noqa: BLE001 -- as in the invocation handlers: a 500, one log line
                response = self.gateway._internal_error(
                    call, exc, {"type": PROBLEM_BASE + "internal", "title": "Internal Server Error", "status": 500}
                )
                response.content_type = PROBLEM_TYPE
            return await self.gateway._finish(call, request, response)

        return endpoint

    def _authenticate(self, request: web.Request, call: Call) -> Principal:
        try:
            principal = self.gateway.authenticator.authenticate(request.headers)
        except Unauthenticated:
            call.principal = ANONYMOUS
            raise Reject(
                401, "Unauthorized", "unauthenticated", headers={"WWW-Authenticate": WWW_AUTHENTICATE}
            ) from None
        call.principal = principal
        return principal

    async def _body(self, request: web.Request, *, media: tuple[str, ...] = ("application/json",)) -> Any:
        if request.content_type not in media and request.body_exists:
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

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await self.broker.run(fn)

    @staticmethod
    def _document(document: DataDocument, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(
            body=document.json_text().encode("utf-8"),
            status=status,
            content_type="application/json",
            headers={"ETag": document.etag, **(headers or {})},
        )

    # ---- endpoints ----

    async def get(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        collection, id_ = request.match_info["collection"], request.match_info["id"]
        if caller.kind in ("function", "operator"):  # audited reads: the audit sink lives on the data thread
            version, text = await self._run(lambda: self.plane.get_text(caller, collection, id_))
        else:
            # One primary-key SELECT on the event loop's own connection (WAL: a reader never waits for the
            # writer), with the same checks: cheaper than the hop to the data thread and back.
            version, text = self.plane.get_text(caller, collection, id_)
        tag = etag(version)
        if_none = request.headers.get("If-None-Match")
        if if_none is not None and tag in (v.strip() for v in if_none.split(",")):
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(body=text.encode("utf-8"), content_type="application/json", headers={"ETag": tag})

    async def find(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        collection, query = request.match_info["collection"], request.query
        raw = query.get("filter")
        filter_ = parse_json(raw, "filter") if raw is not None else {}
        order = parse_order(query.get("order")) or ()
        limit = parse_int(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        assert limit is not None
        cursor = query.get("cursor") or None
        page = await self._run(
            lambda: self.plane.find(caller, collection, filter_, order=order, limit=limit, cursor=cursor)
        )
        return web.Response(body=dumps(page.as_json()), content_type="application/json")

    async def insert(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        collection = request.match_info["collection"]
        document = await self._body(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise HttpProblem(400, "Bad Request", "Idempotency-Key must be 1 to 255 characters")
        id_ = request.query.get("id")
        made = _one(await self._write(caller, WriteOp("insert", collection, id_, document), key=key))
        return self._document(made, 201, {"Location": f"/v1/collections/{collection}/docs/{made.id}"})

    @staticmethod
    def _if_match(request: web.Request) -> tuple[int | None, bool]:
        """(the If-Match version, whether one is required): `*` means any version; none at all is a 428."""
        text = request.headers.get("If-Match")
        if text is not None and text.strip() == "*":
            return None, False
        return parse_version(text, "If-Match"), True

    async def replace(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        collection, id_ = request.match_info["collection"], request.match_info["id"]
        version, required = self._if_match(request)
        document = await self._body(request)
        made = _one(
            await self._write(caller, WriteOp("replace", collection, id_, document, version), required=required)
        )
        return self._document(made)

    async def patch(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        collection, id_ = request.match_info["collection"], request.match_info["id"]
        version, required = self._if_match(request)
        patch = await self._body(request, media=(MERGE_PATCH, "application/json"))
        made = _one(await self._write(caller, WriteOp("patch", collection, id_, patch, version), required=required))
        return self._document(made)

    async def delete(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        collection, id_ = request.match_info["collection"], request.match_info["id"]
        version, required = self._if_match(request)
        await self._write(caller, WriteOp("delete", collection, id_, None, version), required=required)
        return web.Response(status=204)

    async def batch(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        ops = parse_batch(await self._body(request))
        hooks = self.broker.hooks
        if hooks is not None and any(hooks.applies(op.collection, op.op) for op in ops):
            results = await hooks.commit_writes(caller, ops)  # every op's hooks, in one transaction
        else:
            results = await self._run(lambda: self.plane.batch(caller, ops))
        return web.Response(
            body=dumps({"results": [None if r is None else r.as_json() for r in results]}),
            content_type="application/json",
        )

    async def changes(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        since = parse_int(request.query, "since", 0, 0, 2**62)
        limit = parse_int(request.query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        assert since is not None and limit is not None
        only = request.query.get("collection") or None
        feed = await self._run(lambda: self.plane.changes(caller, since, limit=limit, collection=only))
        body = {"changes": [c.as_json() for c in feed], "next": feed[-1].seq if feed else since}
        return web.Response(body=dumps(body), content_type="application/json")

    async def openapi(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        def collections() -> dict[str, Any]:
            return {name: self.plane.collection(name).model.schema for name in self.plane.collection_names()}

        return web.Response(body=dumps(openapi_document(await self._run(collections))), content_type="application/json")


def _one(results: list[DataDocument | None]) -> DataDocument:
    """The document a one-call insert / replace / patch made (an idempotent replay's too)."""
    made = results[0] if results else None
    if made is None:
        raise AssertionError("a write that made no document")
    return made


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
