"""The data service against a real SQLite data file: CRUD, versions, preconditions, merge patch, schema and
size checks, ids, idempotency, cursors, ordering, unique indexes, tenants, the rights matrix, transactions
(all or nothing, a concurrent conflict), the change log's hash chain, budgets, sync and check."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docbackend import raw

from fnctl.data.caller import Caller
from fnctl.data.documents import ENCODE, Budget, WriteOp
from fnctl.data.errors import (
    BadFilter,
    Conflict,
    Forbidden,
    Invalid,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
)
from fnctl.data.filters import parse
from fnctl.data.plane import DataPlane
from fnctl.manifest.model import Collection, Grant, Index, Policy, RowRule
from fnctl.state import docstore
from fnctl.state.docrecords import NotEmpty, Query
from fnctl.state.docsql import compile_filter
from fnctl.state.docsqlpg import compile_filter as compile_filter_pg
from fnctl.state.location import StateLocation

SCHEMA = {
    "type": "object",
    "required": ["customer"],
    "properties": {
        "customer": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
}
ORDERS = Collection(
    "orders", SCHEMA, (Index(("customer", "createdAt")), Index(("number",), unique=True), Index(("total",))), 4096
)
NOTES = Collection("notes", None)
MINE = RowRule("orders", parse({"customer": "$caller.id"}, caller_refs=True))
POLICIES = [
    Policy(
        "p",
        {
            "clerk": Grant(read=("orders", "notes"), write=("orders", "notes")),
            "viewer": Grant(read=("orders",)),
            "customer": Grant(read=(MINE,), write=(MINE,)),
        },
    )
]


@pytest.fixture
def plane(data_location: docstore.Location) -> Iterator[DataPlane]:
    store = docstore.connect(data_location)
    dp = DataPlane(store, lambda: POLICIES)
    dp.sync_collections([ORDERS, NOTES], prune=False, force=False)
    yield dp
    store.close()


CLERK = Caller("key:clerk", "key", frozenset({"clerk"}), "acme")
VIEWER = Caller("key:viewer", "key", frozenset({"viewer"}), "acme")
ALICE = Caller("jwt:alice", "jwt", frozenset({"customer"}), "acme")
BOB = Caller("jwt:bob", "jwt", frozenset({"customer"}), "acme")
OTHER_TENANT = Caller("key:clerk2", "key", frozenset({"clerk"}), "globex")
NOBODY = Caller("anonymous", "anonymous", frozenset(), "acme")
OPERATOR = Caller.operator("root", "acme")


def test_the_data_file_sits_beside_the_state_file(tmp_path: Path) -> None:
    assert docstore.data_path(tmp_path / "fnctl.db") == tmp_path / "fnctl.data.db"


def test_the_data_store_opens_from_the_state_location_beside_it_or_in_its_database(
    state_location: StateLocation,
) -> None:
    """One opener for every call site: SQLite's data file beside state.db, PostgreSQL's own database (schema
    fnctl_data, and no data file on the host); asking whether it exists creates nothing."""
    assert not docstore.exists_at(state_location)
    assert not docstore.exists_at(state_location)  # still not: the question created nothing
    store = docstore.open_at(state_location)
    try:
        DataPlane(store, lambda: POLICIES).sync_collections([NOTES], prune=False, force=False)
        DataPlane(store, lambda: POLICIES).insert(CLERK, "notes", {"n": 1}, id="n-1")
    finally:
        store.close()
    assert docstore.exists_at(state_location)
    beside = docstore.data_path(state_location.path)
    assert beside.exists() is (state_location.url is None)
    assert store.backend == ("sqlite" if state_location.url is None else "postgresql")
    again = docstore.open_at(state_location)
    try:
        assert again.get("notes", "acme", "n-1") is not None
    finally:
        again.close()
    if state_location.url is not None:
        assert "fnctl_data" in docstore.where(state_location)


def test_crud_versions_and_merge_patch(plane: DataPlane) -> None:
    doc = plane.insert(CLERK, "orders", {"customer": "a", "total": 5, "meta": {"x": 1, "y": 2}}, id="o-1")
    assert (doc.id, doc.version, doc.etag, doc.created_by) == ("o-1", 1, '"1"', "key:clerk")
    assert plane.get(CLERK, "orders", "o-1") == doc
    patched = plane.patch(CLERK, "orders", "o-1", {"total": 7, "meta": {"x": None, "z": 3}}, if_match=1)
    assert patched.version == 2 and patched.data == {"customer": "a", "total": 7, "meta": {"y": 2, "z": 3}}
    replaced = plane.replace(CLERK, "orders", "o-1", {"customer": "b"}, if_match=2)
    assert replaced.version == 3 and replaced.data == {"customer": "b"} and replaced.created_at == doc.created_at
    with pytest.raises(PreconditionFailed):
        plane.replace(CLERK, "orders", "o-1", {"customer": "c"}, if_match=2)
    with pytest.raises(PreconditionFailed):
        plane.delete(CLERK, "orders", "o-1", if_match=1)
    plane.delete(CLERK, "orders", "o-1", if_match=3)
    with pytest.raises(NotFound):
        plane.get(CLERK, "orders", "o-1")


@pytest.mark.parametrize("call", ["replace", "patch", "delete"])
def test_rest_writes_without_if_match_are_428_and_write_nothing(plane: DataPlane, call: str) -> None:
    plane.insert(CLERK, "orders", {"customer": "a"}, id="o-1")
    with pytest.raises(PreconditionRequired) as caught:
        if call == "delete":
            plane.delete(CLERK, "orders", "o-1", require_if_match=True)
        else:
            getattr(plane, call)(CLERK, "orders", "o-1", {"customer": "z"}, require_if_match=True)
    assert caught.value.status == 428
    assert plane.get(CLERK, "orders", "o-1").version == 1


def test_schema_violations_are_all_listed_with_json_paths(plane: DataPlane) -> None:
    with pytest.raises(Invalid) as caught:
        plane.insert(CLERK, "orders", {"total": -1, "items": [{"sku": "a"}, {"qty": 1}]})
    assert caught.value.status == 400
    paths = [p for p, _ in caught.value.violations]
    assert paths == ["$", "$.items[1]", "$.total"], caught.value.violations
    assert plane.find(CLERK, "orders").documents == ()


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None, {"customer": float("nan")}])
def test_non_object_documents_are_refused(plane: DataPlane, data: Any) -> None:
    with pytest.raises(Invalid):
        plane.insert(CLERK, "orders", data)


def test_documents_over_the_size_limit_are_413(plane: DataPlane) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        plane.insert(CLERK, "orders", {"customer": "x" * 5000})
    assert caught.value.status == 413


@pytest.mark.parametrize("bad", ["", "a/b", "a\nb", "a\x00", "x" * 129, "\x85", "\ud800"])
def test_bad_ids_are_refused(plane: DataPlane, bad: str) -> None:
    with pytest.raises(Invalid):
        plane.insert(CLERK, "orders", {"customer": "a"}, id=bad)
    with pytest.raises(Invalid):
        plane.get(CLERK, "orders", bad)


def test_generated_ids_are_uuid7_and_existing_ids_conflict(plane: DataPlane) -> None:
    doc = plane.insert(CLERK, "orders", {"customer": "a"})
    assert len(doc.id) == 36 and doc.id[14] == "7"
    parsed = uuid.UUID(doc.id)
    assert str(parsed) == doc.id and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    plane.insert(CLERK, "orders", {"customer": "a"}, id="fixed")
    with pytest.raises(Conflict):
        plane.insert(CLERK, "orders", {"customer": "b"}, id="fixed")


def test_unknown_collection_is_404(plane: DataPlane) -> None:
    with pytest.raises(NotFound):
        plane.insert(CLERK, "nope", {"a": 1})
    with pytest.raises(NotFound):
        plane.find(CLERK, "nope")


def test_idempotent_insert_returns_the_first_response(plane: DataPlane) -> None:
    first = plane.insert(CLERK, "orders", {"customer": "a"}, idempotency_key="k1")
    again = plane.insert(CLERK, "orders", {"customer": "a"}, idempotency_key="k1")
    assert again == first
    assert len(plane.find(CLERK, "orders").documents) == 1
    other_tenant = plane.insert(OTHER_TENANT, "orders", {"customer": "a"}, idempotency_key="k1")
    assert other_tenant.id != first.id


def test_cursor_pagination_visits_every_document_once_in_order(plane: DataPlane) -> None:
    for i in range(23):
        plane.insert(CLERK, "orders", {"customer": f"c{i % 4}", "total": i % 5, "number": i}, id=f"o{i:02}")
    for order in (["total"], ["-total"], ["customer", "-createdAt"], ["-id"], []):
        seen: list[str] = []
        cursor = None
        for _ in range(20):
            page = plane.find(CLERK, "orders", {"number": {"$gte": 2}}, order=order, limit=4, cursor=cursor)
            seen += [d.id for d in page.documents]
            cursor = page.cursor
            if cursor is None:
                break
        assert sorted(seen) == [f"o{i:02}" for i in range(2, 23)], order
        assert len(seen) == len(set(seen))
    totals = [d.data["total"] for d in plane.find(CLERK, "orders", order=["-total"], limit=1000).documents]
    assert totals == sorted(totals, reverse=True)


def test_ordering_only_on_indexed_fields_and_bad_cursors(plane: DataPlane) -> None:
    with pytest.raises(BadFilter, match="not indexed"):
        plane.find(CLERK, "orders", order=["customer.name"])
    page = plane.find(CLERK, "orders", order=["total"], limit=1)
    assert page.cursor is None
    plane.insert(CLERK, "orders", {"customer": "a", "total": 1})
    plane.insert(CLERK, "orders", {"customer": "a", "total": 2})
    cursor = plane.find(CLERK, "orders", order=["total"], limit=1).cursor
    assert cursor is not None
    with pytest.raises(BadFilter):
        plane.find(CLERK, "orders", order=["-total"], limit=1, cursor=cursor)
    with pytest.raises(BadFilter):
        plane.find(CLERK, "orders", cursor="!!garbage")
    with pytest.raises(BadFilter):
        plane.find(CLERK, "orders", {"a": {"$regex": "x"}})
    with pytest.raises(BadFilter):
        plane.find(CLERK, "orders", limit=0)
    assert len(plane.find(CLERK, "orders", limit=10**6).documents) == 2  # capped, not refused


def test_the_filter_uses_the_generated_column_index(plane: DataPlane) -> None:
    query = Query("orders", "acme", parse({"number": 5}), (("id", False),), 10)
    db = raw(plane.store)
    if plane.store.url is None:
        sql, params = compile_filter(query.filter, {"number", "total", "customer", "createdAt"})
        explain = f"EXPLAIN QUERY PLAN SELECT id FROM docs_orders WHERE tenant = ? AND {sql}"
        plan = " ".join(str(r) for r in db.execute(explain, ["acme", *params]))
        assert "USING INDEX" in plan and "docs_orders_ix_" in plan, plan
    else:  # the planner may scan a table this small: told not to, it must still find an index to use
        sql, params = compile_filter_pg(query.filter, frozenset({"number", "total", "customer", "createdAt"}))
        db.execute("SET enable_seqscan = off")
        explain = f"EXPLAIN SELECT id FROM docs_orders WHERE tenant = ? AND {sql}"
        plan = " ".join(str(r) for r in db.execute(explain, ["acme", *params]))
        assert "Index" in plan and " ix_" in plan and "ixn_" in plan, plan
    db.close()


def test_unique_indexes_are_409(plane: DataPlane) -> None:
    plane.insert(CLERK, "orders", {"customer": "a", "number": 1})
    with pytest.raises(Conflict, match="number"):
        plane.insert(CLERK, "orders", {"customer": "b", "number": 1})
    plane.insert(OTHER_TENANT, "orders", {"customer": "b", "number": 1})  # unique within a tenant


def test_tenants_never_see_each_other(plane: DataPlane) -> None:
    doc = plane.insert(CLERK, "orders", {"customer": "a"}, id="shared-id")
    plane.insert(OTHER_TENANT, "orders", {"customer": "z"}, id="shared-id")
    assert plane.get(OTHER_TENANT, "orders", "shared-id").data == {"customer": "z"}
    assert plane.get(CLERK, "orders", "shared-id") == doc
    assert [d.data for d in plane.find(OTHER_TENANT, "orders").documents] == [{"customer": "z"}]
    plane.delete(OTHER_TENANT, "orders", "shared-id")
    assert plane.get(CLERK, "orders", "shared-id") == doc
    assert all(c.after is None or c.after["data"] != {"customer": "z"} for c in plane.changes(CLERK))


def test_rights_matrix_no_unauthorised_read_or_write(plane: DataPlane) -> None:
    """Every caller × collection × operation × document owner × tenant: allowed exactly when the policy says;
    an unreadable document is NotFound, a collection the caller may not write is Forbidden."""
    seeded = {}
    for tenant, owner in itertools.product(("acme", "globex"), ("jwt:alice", "jwt:bob")):
        op = Caller.operator("seed", tenant)
        seeded[(tenant, owner)] = plane.insert(op, "orders", {"customer": owner}, id=f"{tenant}-{owner[4:]}").id
        plane.insert(op, "notes", {"owner": owner}, id=f"{tenant}-{owner[4:]}")
    callers = [CLERK, VIEWER, ALICE, BOB, OTHER_TENANT, NOBODY]

    def may_read(c: Caller, collection: str, tenant: str, owner: str) -> bool:
        if c.tenant != tenant:
            return False
        if "clerk" in c.roles:
            return True
        if "viewer" in c.roles:
            return collection == "orders"
        return "customer" in c.roles and collection == "orders" and owner == c.subject

    def may_write(c: Caller, collection: str, tenant: str, owner: str) -> bool:
        return may_read(c, collection, tenant, owner) and "viewer" not in c.roles

    unauthorised = 0
    for c, collection, (tenant, owner) in itertools.product(callers, ("orders", "notes"), seeded):
        id = f"{tenant}-{owner[4:]}"
        try:
            plane.get(c, collection, id)
            unauthorised += not may_read(c, collection, tenant, owner)
        except NotFound:
            assert not may_read(c, collection, tenant, owner), (c, collection, id)
        found = {d.id for d in plane.find(c, collection).documents}
        unauthorised += id in found and not may_read(c, collection, tenant, owner)
        data = {"customer": owner} if collection == "orders" else {"owner": owner}
        try:
            plane.patch(c, collection, id, {"touched": c.subject})
            unauthorised += not may_write(c, collection, tenant, owner)
        except (NotFound, Forbidden) as exc:
            assert not may_write(c, collection, tenant, owner), (c, collection, id)
            if isinstance(exc, Forbidden):  # only for a caller who may read the row, or no write at all
                assert may_read(c, collection, tenant, owner) or not _writes(c, collection)
        try:
            plane.insert(c, collection, {**data, "new": True})  # always into the caller's own tenant
            unauthorised += not may_write(c, collection, c.tenant, owner)
        except Forbidden:
            assert not may_write(c, collection, c.tenant, owner)
    assert unauthorised == 0
    # A customer can write only orders that name them as customer.
    with pytest.raises(Forbidden):
        plane.insert(ALICE, "orders", {"customer": "jwt:bob"})
    alice_id = "acme-alice"
    with pytest.raises(Forbidden):
        plane.patch(ALICE, "orders", alice_id, {"customer": "jwt:bob"})
    with pytest.raises(NotFound):
        plane.delete(ALICE, "orders", "acme-bob")


def _writes(c: Caller, collection: str) -> bool:
    return bool(c.roles & {"clerk"}) or ("customer" in c.roles and collection == "orders")


def test_a_transaction_is_all_or_nothing_and_reads_its_own_writes(plane: DataPlane) -> None:
    plane.insert(CLERK, "orders", {"customer": "a", "total": 10}, id="acct")
    txn = plane.transaction(CLERK)
    txn.patch("orders", "acct", {"total": 3})
    new = txn.insert("orders", {"customer": "b", "total": 7}, id="second")
    assert txn.get("orders", "acct").data["total"] == 3
    assert {d.id for d in txn.find("orders", {"total": {"$lt": 8}}).documents} == {"acct", "second"}
    assert new.version == 1
    assert plane.get(CLERK, "orders", "acct").data["total"] == 10  # nothing visible before commit
    with pytest.raises(NotFound):
        plane.get(CLERK, "orders", "second")
    txn.commit()
    assert plane.get(CLERK, "orders", "acct").data["total"] == 3
    assert plane.get(CLERK, "orders", "second").version == 1
    # A batch with one bad write writes nothing.
    with pytest.raises(Invalid):
        plane.batch(
            CLERK,
            [
                WriteOp("insert", "orders", "third", {"customer": "c"}),
                WriteOp("patch", "orders", "acct", {"total": -5}),
            ],
        )
    with pytest.raises(NotFound):
        plane.get(CLERK, "orders", "third")
    # A commit that fails on a unique index applies none of its writes.
    txn = plane.transaction(CLERK)
    txn.insert("orders", {"customer": "x", "number": 77}, id="u1")
    txn.insert("orders", {"customer": "y", "number": 77}, id="u2")
    with pytest.raises(Conflict):
        txn.commit()
    with pytest.raises(NotFound):
        plane.get(CLERK, "orders", "u1")


def test_concurrent_transactions_conflict_and_none_is_lost(plane: DataPlane) -> None:
    plane.insert(CLERK, "orders", {"customer": "bank", "total": 0}, id="counter")
    first, second = plane.transaction(CLERK), plane.transaction(CLERK)
    assert first.get("orders", "counter").data["total"] == 0
    assert second.get("orders", "counter").data["total"] == 0
    first.patch("orders", "counter", {"total": 1})
    second.patch("orders", "counter", {"total": 1})
    first.commit()
    with pytest.raises(Conflict):
        second.commit()
    # Two threads incrementing with retries: every increment lands exactly once.
    errors: list[BaseException] = []

    def increment(n: int) -> None:
        try:
            for _ in range(n):
                while True:
                    try:  # what a procedure does: re-run the whole body on a conflict
                        txn = plane.transaction(CLERK)
                        total = txn.get("orders", "counter").data["total"]
                        txn.patch("orders", "counter", {"total": total + 1})
                        txn.commit()
                        break
                    except Conflict:
                        continue
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=increment, args=(40,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert plane.get(CLERK, "orders", "counter").data["total"] == 81


def test_a_find_in_a_transaction_conflicts_with_a_new_matching_document(plane: DataPlane) -> None:
    txn = plane.transaction(CLERK)
    assert txn.find("orders", {"customer": "a"}).documents == ()
    txn.insert("notes", {"n": 1})
    plane.insert(CLERK, "orders", {"customer": "a"})
    with pytest.raises(Conflict):
        txn.commit()


def test_the_change_log_is_a_verified_hash_chain(plane: DataPlane) -> None:
    doc = plane.insert(ALICE, "orders", {"customer": "jwt:alice"})
    plane.patch(ALICE, "orders", doc.id, {"total": 2})
    plane.delete(CLERK, "orders", doc.id)
    changes = plane.changes(CLERK)
    assert [(c.op, c.actor) for c in changes] == [
        ("insert", "jwt:alice"),
        ("replace", "jwt:alice"),
        ("delete", "key:clerk"),
    ]
    assert changes[1].before and changes[1].before["version"] == 1 and changes[1].after["version"] == 2  # type: ignore[index]
    assert plane.store.verify_changes().intact
    db = raw(plane.store)
    db.execute("DROP TRIGGER changes_no_update" + (" ON changes" if plane.store.url else ""))
    db.execute("UPDATE changes SET actor = 'someone-else' WHERE seq = 2")
    db.close()
    report = plane.store.verify_changes()
    assert not report.intact and report.findings[0].record == 2


def test_the_change_feed_shows_only_what_the_caller_may_read(plane: DataPlane) -> None:
    plane.insert(ALICE, "orders", {"customer": "jwt:alice"})
    plane.insert(BOB, "orders", {"customer": "jwt:bob"})
    plane.insert(OTHER_TENANT, "orders", {"customer": "jwt:alice"})
    plane.insert(CLERK, "notes", {"n": 1})
    assert [c.after["data"]["customer"] for c in plane.changes(ALICE)] == ["jwt:alice"]  # type: ignore[index]
    assert len(plane.changes(CLERK)) == 3 and len(plane.changes(VIEWER)) == 2
    assert plane.changes(NOBODY) == []
    first = plane.changes(CLERK)[0].seq
    assert [c.seq for c in plane.changes(CLERK, since=first)] == [c.seq for c in plane.changes(CLERK)[1:]]


def test_budgets_raise_limit_exceeded(plane: DataPlane) -> None:
    budget = Budget(operations=3)
    for i in range(3):
        plane.insert(CLERK, "notes", {"i": i}, budget=budget)
    with pytest.raises(LimitExceeded):
        plane.find(CLERK, "notes", budget=budget)
    scan = Budget(scanned=2)
    with pytest.raises(LimitExceeded):
        plane.find(CLERK, "notes", budget=scan)
    written = Budget(bytes_written=10)
    with pytest.raises(LimitExceeded):
        plane.insert(CLERK, "notes", {"text": "x" * 20}, budget=written)
    assert len(plane.find(CLERK, "notes").documents) == 3


def test_sync_refuses_to_drop_a_non_empty_collection_without_force(plane: DataPlane) -> None:
    plane.insert(CLERK, "notes", {"n": 1})
    with pytest.raises(NotEmpty):
        plane.sync_collections([ORDERS], prune=True, force=False)
    assert plane.find(CLERK, "notes").documents != ()
    report = plane.sync_collections([ORDERS], prune=False, force=False)
    assert report.unchanged == ("orders",) and report.dropped == ()
    report = plane.sync_collections([ORDERS], prune=True, force=True)
    assert report.dropped == ("notes",)
    with pytest.raises(NotFound):
        plane.find(CLERK, "notes")


def test_a_schema_change_applies_to_new_writes_and_check_lists_the_old_ones(plane: DataPlane) -> None:
    plane.insert(CLERK, "orders", {"customer": "a"}, id="old")
    stricter = Collection("orders", {**SCHEMA, "required": ["customer", "total"]}, ORDERS.indexes, 4096)
    report = plane.sync_collections([stricter, NOTES], prune=False, force=False)
    assert report.updated == ("orders",)
    with pytest.raises(Invalid):
        plane.insert(CLERK, "orders", {"customer": "b"})
    (bad,) = plane.check("orders")
    assert (bad.tenant, bad.id) == ("acme", "old") and "total" in bad.violations[0][1]


def test_an_index_added_later_is_usable_for_ordering(plane: DataPlane) -> None:
    with pytest.raises(BadFilter):
        plane.find(CLERK, "notes", order=["n"])
    plane.insert(CLERK, "notes", {"n": 2})
    plane.insert(CLERK, "notes", {"n": 1})
    plane.sync_collections([ORDERS, Collection("notes", None, (Index(("n",)),))], prune=False, force=False)
    assert [d.data["n"] for d in plane.find(CLERK, "notes", order=["n"]).documents] == [1, 2]


def test_a_group_commit_keeps_each_write_all_or_nothing_and_fails_them_alone(plane: DataPlane) -> None:
    # What the gateway does with concurrent single writes: one store transaction for all, each in a savepoint
    plane.insert(CLERK, "orders", {"customer": "a", "number": 1}, id="taken")
    seen = plane.insert(CLERK, "orders", {"customer": "a", "total": 1}, id="stale")
    txns = [
        plane.stage(CLERK, WriteOp("insert", "orders", "new-1", {"customer": "b", "number": 2})),
        plane.stage(CLERK, WriteOp("insert", "orders", "dup-number", {"customer": "c", "number": 1})),  # unique
        plane.stage(CLERK, WriteOp("patch", "orders", "stale", {"total": 2}, seen.version), require_if_match=True),
        plane.stage(CLERK, WriteOp("insert", "orders", "new-2", {"customer": "d", "number": 3}), idempotency_key="k-1"),
        plane.stage(CLERK, WriteOp("insert", "orders", "new-3", {"customer": "e", "number": 2})),  # dup of new-1
    ]
    plane.patch(CLERK, "orders", "stale", {"total": 9}, if_match=seen.version)  # moves under the staged patch
    results = plane.commit_group(txns)
    assert [type(r).__name__ for r in results] == ["list", "Conflict", "PreconditionFailed", "list", "Conflict"]
    assert isinstance(results[0], list) and results[0][0] is not None and results[0][0].version == 1
    assert plane.get(CLERK, "orders", "stale").data["total"] == 9  # the stale patch wrote nothing
    for missing in ("dup-number", "new-3"):
        with pytest.raises(NotFound):
            plane.get(CLERK, "orders", missing)
    assert plane.get(CLERK, "orders", "new-2").data["customer"] == "d"
    # the idempotency key was recorded by the group: a retry answers the same document, writes nothing
    again = plane.stage(CLERK, WriteOp("insert", "orders", None, {"customer": "d", "number": 3}), idempotency_key="k-1")
    replay = plane.commit_group([again])
    assert isinstance(replay[0], list) and replay[0][0] is not None and replay[0][0].id == "new-2"
    changes = plane.store.changes(0, "acme", ["orders"], 100)
    assert [c.id for c in changes] == ["taken", "stale", "stale", "new-1", "new-2"]  # only what committed
    assert len({c.txn for c in changes[-2:]}) == 2  # one transaction id per write, though one commit
    assert plane.store.verify_changes().intact


def test_a_group_without_broken_constraints_commits_without_savepoints_and_still_fails_writes_alone(
    plane: DataPlane,
) -> None:
    # The fast path of a group commit: stale and replayed writes are found before they write anything, so no
    # savepoint is needed for them; fresh ids (generated) are not looked up, and land with their change rows.
    seen = plane.insert(CLERK, "orders", {"customer": "a", "total": 1}, id="stale")
    first = plane.insert(CLERK, "orders", {"customer": "k", "number": 7}, idempotency_key="k-7")
    txns = [
        plane.stage(CLERK, WriteOp("insert", "orders", None, {"customer": "b", "number": 2})),
        plane.stage(CLERK, WriteOp("patch", "orders", "stale", {"total": 2}, seen.version), require_if_match=True),
        plane.stage(CLERK, WriteOp("insert", "orders", None, {"customer": "c", "number": 3})),
        plane.stage(CLERK, WriteOp("insert", "orders", None, {"customer": "x"}), idempotency_key="k-7"),
    ]
    # staged before its key is used, as when two requests race: the commit finds the replay
    txns.append(
        plane.stage(CLERK, WriteOp("insert", "orders", None, {"customer": "y", "number": 8}), idempotency_key="k-8")
    )
    plane.insert(CLERK, "orders", {"customer": "z", "number": 9}, idempotency_key="k-8")  # wins the race
    plane.patch(CLERK, "orders", "stale", {"total": 9}, if_match=seen.version)
    results = plane.commit_group(txns)
    assert [type(r).__name__ for r in results] == ["list", "PreconditionFailed", "list", "list", "list"]
    made = [r[0] for r in results if isinstance(r, list)]
    assert [d.data["customer"] if d else None for d in made] == ["b", "c", "k", "z"]  # replays: the first answers
    assert made[2] is not None and made[2].id == first.id
    for doc in made[:2]:
        assert doc is not None and plane.get(CLERK, "orders", doc.id).version == 1
        assert doc.json_text() == ENCODE(doc.as_json())  # the answer's text, spliced around the stored data
    assert plane.get(CLERK, "orders", "stale").data["total"] == 9
    changes = plane.store.changes(0, "acme", ["orders"], 100)
    assert [c.op for c in changes] == ["insert", "insert", "insert", "replace", "insert", "insert"]
    assert plane.store.verify_changes().intact


def test_a_documents_text_is_its_envelope_encoded(plane: DataPlane) -> None:
    made = plane.insert(CLERK, "orders", {"customer": 'Zoë \u2028 "q"', "items": [{"sku": "ä", "n": 1.5}]}, id="é-ü")
    for doc in (made, plane.get(CLERK, "orders", made.id)):
        assert doc.json_text() == ENCODE(doc.as_json())
        assert json.loads(doc.json_text()) == doc.as_json()
