"""The REST data API (`/v1/`) on a real gateway on 127.0.0.1: real state store (keys, Policies), real data file,
real authentication and audit; no containers (no function is invoked). Every status code the API answers,
problem+json bodies, ETags, idempotency, batches all or nothing, the change feed filtered by rights, openapi."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp

from fnctl.data.plane import DataPlane
from fnctl.gateway import keys
from fnctl.gateway.app import Gateway, make_app
from fnctl.gateway.audit import AuditLog
from fnctl.gateway.auth import AuthConfig, Authenticator
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.pools import PoolManager
from fnctl.gateway.request import GatewayLimits
from fnctl.gateway.serve import data_broker
from fnctl.gateway.server import start_server
from fnctl.gateway.table import StoreTable
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

PROBLEM = "application/problem+json"
ORDERS = {
    "schema": {
        "type": "object",
        "required": ["customer", "total"],
        "properties": {
            "customer": {"type": "string"},
            "total": {"type": "number", "minimum": 0},
            "number": {"type": "integer"},
            "status": {"type": "string"},
        },
    },
    "indexes": [{"fields": ["customer"]}, {"fields": ["number"], "unique": True}],
    "limits": {"documentSize": "1Ki"},
}
NOTES = {"schema": {"type": "object"}}
POLICIES = {
    "data": {
        "roles": {
            # a clerk reads and writes its own orders only, and may read notes
            "clerk": {
                "read": [{"collection": "orders", "where": {"createdBy": "$caller.id"}}, "notes"],
                "write": [{"collection": "orders", "where": {"createdBy": "$caller.id"}}],
            },
            "admin": {"read": ["*"], "write": ["*"]},
            "auditor": {"read": ["orders"]},
        }
    }
}


class NoPool:
    """No function is invoked by these tests: the gateway's pool is never asked for an instance."""

    async def reconcile(self, routes: Any) -> None:
        return None

    def stats(self) -> dict[Any, Any]:
        return {}


@dataclass
class Api:
    url: str
    session: aiohttp.ClientSession
    tokens: dict[str, str]
    subjects: dict[str, str]
    store_path: Path
    runner: Any  # the GatewayRunner (its server's lean path: `runner.server.lean`)

    async def call(
        self,
        method: str,
        path: str,
        who: str | None = None,
        *,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        sent = dict(headers or {})
        if who is not None:
            sent["Authorization"] = f"Bearer {self.tokens[who]}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.url + path, data=data, headers=sent) as response:
            text = await response.read()
            parsed = json.loads(text) if text else None
            return response.status, {k.lower(): v for k, v in response.headers.items()}, parsed


@asynccontextmanager
async def serving(tmp_path: Path, lean: bool = True) -> AsyncIterator[Api]:
    store_path = tmp_path / "state" / "fnctl.db"
    store = connect(store_path)
    tokens, subjects = {}, {}
    for name, roles, tenant in (
        ("alice", ("clerk",), "acme"),
        ("bob", ("clerk",), "acme"),
        ("carol", ("clerk",), "globex"),
        ("admin", ("admin",), "acme"),
        ("globex-admin", ("admin",), "globex"),
        ("auditor", ("auditor",), "acme"),
        ("nobody", ("visitor",), "acme"),
    ):
        key, secret = keys.create(store, name, roles, tenant, "test")
        tokens[name], subjects[name] = secret, f"key:{key.id}"
    store.set_resources("Policy", POLICIES)
    store.close()
    documents = docstore.connect(docstore.data_path(store_path))
    DataPlane(documents, lambda: ()).sync_collections(
        [parse_collection("orders", ORDERS), parse_collection("notes", NOTES)], prune=False, force=False
    )
    documents.close()

    limits = GatewayLimits(read_timeout=5, body_timeout=5, max_body=64_000, reload_interval=0.05)
    gateway = Gateway(
        pool=cast(PoolManager, NoPool()),
        authenticator=Authenticator(StateLocation(store_path), AuthConfig()),
        metrics=Metrics(),
        audit=AuditLog(StateLocation(store_path)),
        source=StoreTable(StateLocation(store_path)),
        limits=limits,
    )
    gateway.broker = data_broker(StateLocation(store_path), gateway)
    gateway.pool_ready = True
    runner, port = await start_server(make_app(gateway), "127.0.0.1", 0, limits, lean=lean)
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{port}", session, tokens, subjects, store_path, runner)
    finally:
        await runner.cleanup()
        await asyncio.to_thread(gateway.audit.close)
        gateway.broker.close_all()
        gateway.authenticator.close()


def run(tmp_path: Path, test: Callable[[Api], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(tmp_path) as api:
            await test(api)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def _problem(status: int, headers: dict[str, str], body: Any, expected: int, kind: str) -> dict[str, Any]:
    assert status == expected, (status, body)
    assert headers["content-type"].startswith(PROBLEM), headers
    assert body["status"] == expected and body["type"].endswith("/" + kind) and body["title"], body
    return cast(dict[str, Any], body)


ORDER = {"customer": "c1", "total": 10}


def test_crud_with_etags_if_match_and_merge_patch(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        status, headers, made = await api.call("POST", "/v1/collections/orders/docs?id=o-1", "alice", body=ORDER)
        assert status == 201 and made["id"] == "o-1" and made["version"] == 1 and made["data"] == ORDER
        assert headers["etag"] == '"1"' and headers["location"] == "/v1/collections/orders/docs/o-1"
        assert made["createdBy"] == api.subjects["alice"]

        status, headers, got = await api.call("GET", "/v1/collections/orders/docs/o-1", "alice")
        assert status == 200 and got == made and headers["etag"] == '"1"'
        status, _, _ = await api.call(
            "GET", "/v1/collections/orders/docs/o-1", "alice", headers={"If-None-Match": '"1"'}
        )
        assert status == 304

        # PUT / PATCH / DELETE need If-Match (428), a stale one is a 412, nothing written either way
        for method in ("PUT", "PATCH", "DELETE"):
            _problem(
                *await api.call(method, "/v1/collections/orders/docs/o-1", "alice", body=ORDER),
                428,
                "precondition-required",
            )
        _problem(
            *await api.call("PUT", "/v1/collections/orders/docs/o-1", "alice", body=ORDER, headers={"If-Match": '"7"'}),
            412,
            "precondition-failed",
        )
        status, _, bad = await api.call(
            "PUT", "/v1/collections/orders/docs/o-1", "alice", body=ORDER, headers={"If-Match": "yesterday"}
        )
        assert status == 400 and "If-Match" in bad["detail"]

        status, headers, replaced = await api.call(
            "PUT",
            "/v1/collections/orders/docs/o-1",
            "alice",
            body={**ORDER, "status": "new", "total": 12},
            headers={"If-Match": '"1"'},
        )
        assert status == 200 and replaced["version"] == 2 and headers["etag"] == '"2"'

        status, _, patched = await api.call(
            "PATCH",
            "/v1/collections/orders/docs/o-1",
            "alice",
            raw=b'{"status": null, "total": 3}',
            headers={"If-Match": '"2"', "Content-Type": "application/merge-patch+json"},
        )
        assert status == 200 and patched["version"] == 3 and patched["data"] == {"customer": "c1", "total": 3}

        status, _, _ = await api.call("DELETE", "/v1/collections/orders/docs/o-1", "alice", headers={"If-Match": '"3"'})
        assert status == 204
        _problem(*await api.call("GET", "/v1/collections/orders/docs/o-1", "alice"), 404, "not-found")
        # an existing id is a 409
        await api.call("POST", "/v1/collections/orders/docs?id=o-2", "alice", body=ORDER)
        _problem(*await api.call("POST", "/v1/collections/orders/docs?id=o-2", "alice", body=ORDER), 409, "conflict")

    run(tmp_path, test)


def test_bad_input_is_a_problem_with_paths_and_nothing_is_written(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        docs = "/v1/collections/orders/docs"
        body = _problem(*await api.call("POST", docs, "admin", body={"customer": 5, "total": -1}), 400, "invalid")
        assert {v["path"] for v in body["violations"]} == {"$.customer", "$.total"}, body
        _problem(*await api.call("POST", docs, "admin", body=[1, 2]), 400, "invalid")
        _problem(
            *await api.call(
                "POST", docs, "admin", raw=b'{"customer": "\xff"}', headers={"Content-Type": "application/json"}
            ),
            400,
            "invalid",
        )
        _problem(
            *await api.call(
                "POST", docs, "admin", raw=b'{"customer": NaN}', headers={"Content-Type": "application/json"}
            ),
            400,
            "invalid",
        )
        _problem(
            *await api.call(
                "POST", docs, "admin", raw=b"customer=c1", headers={"Content-Type": "application/x-www-form-urlencoded"}
            ),
            415,
            "unsupported-media-type",
        )
        _problem(*await api.call("POST", docs, "admin", body={**ORDER, "pad": "x" * 2000}), 413, "too-large")
        _problem(*await api.call("POST", docs + "?id=a%01b", "admin", body=ORDER), 400, "invalid")
        _problem(*await api.call("POST", docs + "?id=" + "x" * 129, "admin", body=ORDER), 400, "invalid")
        _problem(*await api.call("POST", "/v1/collections/nope/docs", "admin", body=ORDER), 404, "not-found")
        _problem(*await api.call("GET", docs + '?filter={"total":{"$regex":"x"}}', "admin"), 400, "bad-filter")
        _problem(*await api.call("GET", docs + "?filter={nope", "admin"), 400, "invalid")
        _problem(*await api.call("GET", docs + "?order=total", "admin"), 400, "bad-filter")
        _problem(*await api.call("GET", docs + "?limit=0", "admin"), 400, "invalid")
        _problem(*await api.call("GET", docs + "?cursor=garbage", "admin"), 400, "bad-filter")
        # a unique index
        await api.call("POST", docs, "admin", body={**ORDER, "number": 1})
        _problem(*await api.call("POST", docs, "admin", body={**ORDER, "number": 1}), 409, "conflict")
        status, _, page = await api.call("GET", docs, "admin")
        assert status == 200 and len(page["documents"]) == 1, page

    run(tmp_path, test)


def test_rights_tenants_and_unreadable_is_404(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        docs = "/v1/collections/orders/docs"
        await api.call("POST", docs + "?id=a1", "alice", body=ORDER)
        await api.call("POST", docs + "?id=b1", "bob", body={**ORDER, "customer": "c2"})
        # bob may not see alice's order: 404, never 403; nor change it
        _problem(*await api.call("GET", docs + "/a1", "bob"), 404, "not-found")
        _problem(*await api.call("PUT", docs + "/a1", "bob", body=ORDER, headers={"If-Match": '"1"'}), 404, "not-found")
        status, _, page = await api.call("GET", docs, "bob")
        assert status == 200 and [d["id"] for d in page["documents"]] == ["b1"]
        # another tenant sees nothing of acme's, even with every right; its own a1 is another document
        _problem(*await api.call("GET", docs + "/a1", "globex-admin"), 404, "not-found")
        status, _, made = await api.call("POST", docs + "?id=a1", "carol", body=ORDER)
        assert status == 201
        status, _, page = await api.call("GET", docs, "admin")
        assert sorted(d["id"] for d in page["documents"]) == ["a1", "b1"]
        assert next(d for d in page["documents"] if d["id"] == "a1")["createdBy"] == api.subjects["alice"]
        # read-only and no-rights callers: writes are 403, reads of an unreadable collection 404 / empty
        _problem(*await api.call("POST", docs, "auditor", body=ORDER), 403, "forbidden")
        _problem(*await api.call("POST", docs, "nobody", body=ORDER), 403, "forbidden")
        _problem(*await api.call("GET", docs + "/a1", "nobody"), 404, "not-found")
        status, _, page = await api.call("GET", docs, "nobody")
        assert status == 200 and page["documents"] == []
        # anonymous: reads nothing (no roles), a write is a 401 with WWW-Authenticate; a bad key a 401 too
        status, headers, body = await api.call("GET", docs)
        assert status == 200 and body["documents"] == []
        _problem(*await api.call("GET", docs + "/a1"), 404, "not-found")
        status, headers, body = await api.call("POST", docs, body=ORDER)
        _problem(status, headers, body, 401, "unauthenticated")
        assert "www-authenticate" in headers
        bad = await api.session.get(api.url + docs, headers={"Authorization": "Bearer fk_nope"})
        assert bad.status == 401 and "WWW-Authenticate" in bad.headers
        assert bad.headers["Content-Type"].startswith(PROBLEM)

    run(tmp_path, test)


def test_idempotency_key_inserts_once(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        docs = "/v1/collections/orders/docs"
        key = {"Idempotency-Key": "order-77"}
        first = await api.call("POST", docs, "alice", body=ORDER, headers=key)
        again = await api.call("POST", docs, "alice", body=ORDER, headers=key)
        assert first[0] == 201 and again[0] in (200, 201) and again[2]["id"] == first[2]["id"]
        status, _, page = await api.call("GET", docs, "admin")
        assert len(page["documents"]) == 1
        _problem(
            *await api.call("POST", docs, "alice", body=ORDER, headers={"Idempotency-Key": "k" * 300}), 400, "invalid"
        )

    run(tmp_path, test)


def test_batch_is_all_or_nothing(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        good = {
            "operations": [
                {"op": "insert", "collection": "orders", "id": "x1", "document": ORDER},
                {"op": "insert", "collection": "notes", "id": "n1", "document": {"text": "hi"}},
            ]
        }
        status, _, body = await api.call("POST", "/v1/batch", "admin", body=good)
        assert status == 200 and [r["id"] for r in body["results"]] == ["x1", "n1"]
        bad = {
            "operations": [
                {"op": "patch", "collection": "orders", "id": "x1", "patch": {"status": "paid"}, "ifMatch": 1},
                {"op": "insert", "collection": "orders", "id": "x2", "document": ORDER},
                {"op": "insert", "collection": "orders", "id": "x3", "document": {"customer": "c1"}},  # no total
            ]
        }
        body = _problem(*await api.call("POST", "/v1/batch", "admin", body=bad), 400, "invalid")
        assert body["violations"], body
        stale = {
            "operations": [
                {"op": "delete", "collection": "notes", "id": "n1", "ifMatch": 1},
                {"op": "replace", "collection": "orders", "id": "x1", "document": ORDER, "ifMatch": 9},
            ]
        }
        _problem(*await api.call("POST", "/v1/batch", "admin", body=stale), 412, "precondition-failed")
        _problem(*await api.call("POST", "/v1/batch", "admin", body={"operations": [{"op": "drop"}]}), 400, "invalid")
        _problem(*await api.call("POST", "/v1/batch", "admin", body={"operations": []}), 400, "invalid")
        # a clerk's batch that touches a collection it may not write: 403, its other write not applied
        mixed = {
            "operations": [
                {"op": "insert", "collection": "orders", "id": "a9", "document": ORDER},
                {"op": "insert", "collection": "notes", "id": "n9", "document": {}},
            ]
        }
        _problem(*await api.call("POST", "/v1/batch", "alice", body=mixed), 403, "forbidden")
        status, _, page = await api.call("GET", "/v1/collections/orders/docs", "admin")
        assert [(d["id"], d["version"], d["data"]) for d in page["documents"]] == [("x1", 1, ORDER)]
        status, _, note = await api.call("GET", "/v1/collections/notes/docs/n1", "admin")
        assert status == 200 and note["version"] == 1

    run(tmp_path, test)


def test_change_feed_shows_only_what_the_caller_may_read(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        docs = "/v1/collections/orders/docs"
        await api.call("POST", docs + "?id=a1", "alice", body=ORDER)
        await api.call("POST", docs + "?id=b1", "bob", body=ORDER)
        await api.call("PATCH", docs + "/a1", "alice", body={"total": 5}, headers={"If-Match": '"1"'})
        await api.call("POST", docs + "?id=c1", "carol", body=ORDER)
        await api.call("POST", "/v1/collections/notes/docs?id=n1", "admin", body={"text": "x"})

        async def feed(who: str, since: int = 0) -> list[tuple[str, str, str]]:
            status, _, body = await api.call("GET", f"/v1/changes?since={since}", who)
            assert status == 200, body
            return [(c["collection"], c["id"], c["op"]) for c in body["changes"]]

        assert await feed("alice") == [
            ("orders", "a1", "insert"),
            ("orders", "a1", "replace"),
            ("notes", "n1", "insert"),
        ]
        assert await feed("bob") == [("orders", "b1", "insert"), ("notes", "n1", "insert")]
        assert await feed("auditor") == [
            ("orders", "a1", "insert"),
            ("orders", "b1", "insert"),
            ("orders", "a1", "replace"),
        ]
        assert await feed("carol") == [("orders", "c1", "insert")]
        assert await feed("nobody") == []
        status, _, body = await api.call("GET", "/v1/changes?since=0&limit=1", "admin")
        assert len(body["changes"]) == 1 and body["next"] == body["changes"][0]["seq"]
        rest = await feed("admin", body["next"])
        assert rest == [("orders", "b1", "insert"), ("orders", "a1", "replace"), ("notes", "n1", "insert")]
        change = (await api.call("GET", "/v1/changes?since=0&limit=1", "admin"))[2]["changes"][0]
        assert change["actor"] == api.subjects["alice"] and change["after"]["data"] == ORDER
        _problem(*await api.call("GET", "/v1/changes?since=-1", "admin"), 400, "invalid")

    run(tmp_path, test)


def test_openapi_describes_each_collection(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        status, headers, spec = await api.call("GET", "/v1/openapi.json", "nobody")
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert spec["openapi"].startswith("3.")
        schemas = spec["components"]["schemas"]
        assert schemas["orders"] == ORDERS["schema"] and schemas["notes"] == {"type": "object"}
        for name in ("orders", "notes"):
            item = spec["paths"][f"/v1/collections/{name}/docs/{{id}}"]
            assert set(item) == {"get", "put", "patch", "delete"}
            assert set(spec["paths"][f"/v1/collections/{name}/docs"]) == {"get", "post"}
        assert "/v1/batch" in spec["paths"] and "/v1/changes" in spec["paths"]
        # every $ref resolves
        refs = [v for v in _walk(spec) if isinstance(v, str) and v.startswith("#/")]
        for ref in refs:
            node: Any = spec
            for part in ref[2:].split("/"):
                node = node[part]

    run(tmp_path, test)


def _walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


def test_requests_are_audited_and_writes_are_in_the_change_log(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        await api.call("POST", "/v1/collections/orders/docs?id=a1", "alice", body=ORDER)
        _problem(*await api.call("GET", "/v1/collections/orders/docs/zz", "alice"), 404, "not-found")

    run(tmp_path, test)
    store = connect(tmp_path / "state" / "fnctl.db")
    try:
        rows = store.raw().query("SELECT status, outcome FROM invocations ORDER BY id")
    finally:
        store.close()
    assert [tuple(r) for r in rows] == [(201, "ok"), (404, "rejected")], rows
    documents = docstore.connect(docstore.data_path(tmp_path / "state" / "fnctl.db"))
    try:
        assert documents.verify_changes().intact
        assert [c.op for c in documents.changes(0, "acme", ["orders"], 10)] == ["insert"]
    finally:
        documents.close()


def test_concurrent_inserts_each_get_their_own_answer(tmp_path: Path) -> None:
    """Writes committed together (one group on the data thread) still fail alone and answer their own request:
    a schema error, a forbidden write and a unique clash among good inserts change nothing but themselves."""

    async def test(api: Api) -> None:
        docs = "/v1/collections/orders/docs"

        async def insert(i: int) -> tuple[int, int, Any]:
            kind = i % 4
            who = "nobody" if kind == 2 else "alice"
            body: dict[str, Any] = {
                "customer": f"c{i}",
                "total": -1 if kind == 1 else i,
                "number": 7 if kind == 3 else 1000 + i,
            }
            status, _, answer = await api.call("POST", f"{docs}?id=d{i}", who, body=body)
            return i, status, answer

        answers = await asyncio.gather(*(insert(i) for i in range(48)))
        created = sorted(i for i, status, _ in answers if status == 201)
        for i, status, answer in answers:
            kind = i % 4
            if kind == 0:
                assert status == 201 and answer["id"] == f"d{i}" and answer["data"]["number"] == 1000 + i, answer
            elif kind == 1:
                _problem(status, {"content-type": PROBLEM}, answer, 400, "invalid")
            elif kind == 2:
                assert status in (401, 403), answer
        clashes = [status for i, status, _ in answers if i % 4 == 3]
        assert clashes.count(201) == 1 and clashes.count(409) == len(clashes) - 1, clashes
        documents = docstore.connect(docstore.data_path(api.store_path))
        try:
            assert documents.verify_changes().intact
            logged = sorted(int(c.id[1:]) for c in documents.changes(0, "acme", ["orders"], 100))
        finally:
            documents.close()
        assert logged == created

    run(tmp_path, test)


def _raw(method: str, path: str, token: str | None, body: bytes | None = None, *headers: str) -> bytes:
    sent = [f"{method} {path} HTTP/1.1", "Host: x", "X-Request-Id: rid", *headers]
    if token is not None:
        sent.append(f"Authorization: Bearer {token}")
    if body is not None:
        sent.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(sent) + "\r\n\r\n").encode() + (body or b"")


async def _answer(port: int, raw: bytes) -> tuple[bytes, list[bytes], Any]:
    """One request on a fresh connection: its status line, its headers but Date and Content-Length (sorted),
    and its body (JSON without the fields that hold times and the key's id, which differ between servers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status, *lines = head[:-4].split(b"\r\n")
        length = next((int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length:")), 0)
        body = b"" if raw.startswith(b"HEAD ") else await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    kept = sorted(h for h in lines if not h.lower().startswith((b"date:", b"content-length:")))
    return status, kept, _timeless(json.loads(body) if body else None)


def _timeless(value: Any) -> Any:
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    if isinstance(value, dict):
        drop = ("createdAt", "updatedAt", "createdBy", "updatedBy", "actor", "at", "txn")
        return {k: _timeless(v) for k, v in value.items() if k not in drop}
    return value


def test_the_lean_path_serves_gets_and_posts_of_one_document_as_aiohttp_does(tmp_path: Path) -> None:
    """A GET and a POST of one document are served by the lean request path (the data API's speed figures),
    every other data request is handed to aiohttp; each answer (status, headers, problem+json, ETag, 304,
    Location, idempotent replay, 401/403/404/413/415) is the one aiohttp gives, and each request is audited."""
    docs = "/v1/collections/orders/docs"
    order = json.dumps(ORDER).encode()
    Request = tuple[str, str, str | None, bytes | None, tuple[str, ...]]
    served: list[Request] = [
        ("POST", f"{docs}?id=o-1", "alice", order, ("Content-Type: application/json",)),
        ("POST", f"{docs}?id=o-1", "alice", order, ("Content-Type: application/json",)),
        ("POST", f"{docs}?id=o-2", "alice", b"{nope", ("Content-Type: application/json",)),
        ("POST", f"{docs}?id=o-2", "alice", order, ("Content-Type: text/plain",)),
        ("POST", f"{docs}?id=o-2", "alice", b'{"customer": 1}', ("Content-Type: application/json; charset=utf-8",)),
        ("POST", f"{docs}?id=o-2", None, order, ("Content-Type: application/json",)),
        ("POST", f"{docs}?id=o-2", "auditor", order, ("Content-Type: application/json",)),
        ("POST", f"{docs}?id=o-3", "alice", order, ("Content-Type: application/json", "Idempotency-Key: k1")),
        ("POST", f"{docs}?id=o-4", "alice", order, ("Content-Type: application/json", "Idempotency-Key: k1")),
        ("POST", f"{docs}?id=o-5", "alice", order, ("Idempotency-Key: " + "k" * 256,)),
        ("POST", f"{docs}?id=o-6", "alice", b" " * 64_001, ("Content-Type: application/json",)),
        ("POST", "/v1/collections/nope/docs", "admin", order, ("Content-Type: application/json",)),
        ("GET", f"{docs}/o-1", "alice", None, ()),
        ("GET", f"{docs}/o-1", "alice", None, ('If-None-Match: "1"',)),
        ("GET", f"{docs}/o-1", "carol", None, ()),
        ("GET", f"{docs}/o-1", "nobody", None, ()),
        ("GET", f"{docs}/o-1", None, None, ()),
        ("GET", f"{docs}/o-1", "wrong", None, ()),
        ("GET", "/v1/collections/nope/docs/o-1", "admin", None, ()),
    ]
    handed: list[Request] = [
        ("HEAD", f"{docs}/o-1", "alice", None, ()),
        ("GET", docs, "alice", None, ()),
        ("PUT", f"{docs}/o-1", "alice", order, ("If-Match: *", "Content-Type: application/json")),
        ("GET", f"{docs}/o%2D1", "alice", None, ()),
        ("GET", "/v1/changes", "alice", None, ()),
    ]

    async def answers(lean: bool) -> tuple[list[Any], Any]:
        async with serving(tmp_path / ("lean" if lean else "plain"), lean=lean) as api:
            got = []
            for method, path, who, body, headers in served + handed:
                token = None if who is None else api.tokens.get(who, "fnk_wrong")
                raw = _raw(method, path, token, body, *headers)
                got.append(await _answer(int(api.url.rsplit(":", 1)[1]), raw))
            return got, api.runner.server.lean

    async def main() -> None:
        with_lean, lean = await answers(True)
        without, _ = await answers(False)
        for request, a, b in zip(served + handed, with_lean, without, strict=True):
            assert a == b, request
        assert (lean.served, lean.handed) == (len(served), len(handed))
        statuses = {int(answer[0].split(b" ")[1]) for answer in with_lean}
        assert {200, 201, 304, 400, 401, 403, 404, 409, 413, 415} <= statuses, statuses

    asyncio.run(asyncio.wait_for(main(), 60))
    for name in ("lean", "plain"):
        store = connect(tmp_path / name / "state" / "fnctl.db")
        try:
            rows = store.raw().query("SELECT count(*) FROM invocations")
        finally:
            store.close()
        assert rows[0][0] == len(served) + len(handed), (name, rows)
