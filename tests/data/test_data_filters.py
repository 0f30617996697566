"""The filter language: parsing, every bad-filter case, the pure evaluator, caller binding, and agreement
between the evaluator and the SQL the document store compiles (the same documents match both ways)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from fnctl.data.caller import Caller
from fnctl.data.documents import document
from fnctl.data.errors import BadFilter
from fnctl.data.filters import ALL, And, Compare, Not, Op, Or, bind, matches, parse
from fnctl.data.ordering import field_value
from fnctl.state import docstore
from fnctl.state.docrecords import ChangeMeta, GroupItem, Query, StoredWrite
from fnctl.state.docsql import compile_filter


def env(data: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "id": meta.get("id", "d1"),
        "version": 1,
        "createdAt": "2026-01-01T00:00:00.000000Z",
        "createdBy": "key:a",
        "updatedAt": "2026-01-01T00:00:00.000000Z",
        "updatedBy": "key:a",
        "data": data,
    }


def test_parsing_builds_the_ast() -> None:
    assert parse({}) == ALL
    assert parse({"status": "paid"}) == Compare("status", Op.EQ, "paid")
    assert parse({"total": {"$gt": 10, "$lte": 20}}) == And((Compare("total", Op.GT, 10), Compare("total", Op.LTE, 20)))
    assert parse({"$or": [{"a": 1}, {"b": {"$in": [1, "x", None]}}]}) == Or(
        (Compare("a", Op.EQ, 1), Compare("b", Op.IN, (1, "x", None)))
    )
    assert parse({"$not": {"customer.id": {"$exists": True}}}) == Not(Compare("customer.id", Op.EXISTS, True))


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ([], "$"),
        ("x", "$"),
        ({"a": {"$regex": "x"}}, "$.a.$regex"),
        ({"$where": "1"}, "$.$where"),
        ({"a": {"$in": 3}}, "$.a.$in"),
        ({"a": {"$nin": "x"}}, "$.a.$nin"),
        ({"a": {"$gt": [1]}}, "$.a.$gt"),
        ({"a": {"$gt": None}}, "$.a.$gt"),
        ({"a": {"$gt": True}}, "$.a.$gt"),
        ({"a": {"$eq": {"b": 1}}}, "$.a.$eq"),
        ({"a": [1, 2]}, "$.a"),
        ({"a": {"b": 1}}, "$.a"),
        ({"a": {}}, "$.a"),
        ({"$and": []}, "$.$and"),
        ({"$or": {}}, "$.$or"),
        ({"$not": []}, "$.$not"),
        ({"$and": [{"a": {"$bad": 1}}]}, "$.$and[0].a.$bad"),
        ({"a..b": 1}, "$['a..b']"),
        ({"": 1}, "$['']"),
        ({"a b": 1}, "$['a b']"),
        ({"a": {"$exists": 1}}, "$.a.$exists"),
        ({"a": float("nan")}, "$.a"),
        ({"a": {"$in": [[1]]}}, "$.a.$in[0]"),
    ],
)
def test_bad_filters_are_400_naming_the_json_path(raw: Any, where: str) -> None:
    with pytest.raises(BadFilter) as caught:
        parse(raw)
    assert caught.value.status == 400
    assert caught.value.violations[0][0] == where, caught.value.violations


def test_too_deep_or_too_large_filters_are_refused() -> None:
    deep: dict[str, Any] = {"a": 1}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(BadFilter, match="nests deeper"):
        parse(deep)
    with pytest.raises(BadFilter, match="more than"):
        parse({"$or": [{"a": i} for i in range(300)]})


def test_caller_references_only_in_row_rules() -> None:
    assert parse({"owner": "$caller.id"}) == Compare("owner", Op.EQ, "$caller.id")  # a query: a plain string
    rule = parse({"owner": "$caller.id", "org": "$caller.tenant", "role": {"$in": "$caller.roles"}}, caller_refs=True)
    caller = Caller("jwt:alice", "jwt", frozenset({"b", "a"}), "acme")
    assert bind(rule, caller) == And(
        (Compare("owner", Op.EQ, "jwt:alice"), Compare("org", Op.EQ, "acme"), Compare("role", Op.IN, ("a", "b")))
    )
    with pytest.raises(BadFilter, match="unknown reference"):
        parse({"owner": "$caller.email"}, caller_refs=True)
    with pytest.raises(BadFilter, match="cannot be used here"):
        parse({"n": {"$gt": "$caller.roles"}}, caller_refs=True)


CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"status": "paid"}, {"status": "paid"}, True),
    ({"status": "paid"}, {"status": "new"}, False),
    ({"status": "paid"}, {}, False),
    ({"n": 1}, {"n": 1.0}, True),
    ({"n": "1"}, {"n": 1}, False),
    ({"n": None}, {}, True),
    ({"n": None}, {"n": None}, True),
    ({"n": None}, {"n": 0}, False),
    ({"n": {"$ne": 1}}, {}, True),
    ({"n": {"$ne": 1}}, {"n": 1}, False),
    ({"n": {"$gt": 5}}, {"n": 6}, True),
    ({"n": {"$gt": 5}}, {"n": "7"}, False),
    ({"n": {"$gt": "a"}}, {"n": 7}, False),
    ({"n": {"$gt": "a"}}, {"n": "b"}, True),
    ({"n": {"$gt": "a"}}, {"n": {"x": "b"}}, False),
    ({"n": {"$lte": 5}}, {}, False),
    ({"n": {"$gte": 5, "$lt": 9}}, {"n": 5}, True),
    ({"n": {"$in": [1, 2]}}, {"n": 2}, True),
    ({"n": {"$in": [1, None]}}, {}, True),
    ({"n": {"$in": []}}, {"n": 1}, False),
    ({"n": {"$nin": [1, 2]}}, {}, True),
    ({"n": {"$nin": [1, 2]}}, {"n": 1}, False),
    ({"n": {"$exists": True}}, {"n": None}, True),
    ({"n": {"$exists": False}}, {"n": None}, False),
    ({"n": {"$exists": False}}, {}, True),
    ({"c.id": "x"}, {"c": {"id": "x"}}, True),
    ({"c.id": "x"}, {"c": "x"}, False),
    ({"$not": {"n": {"$gt": 1}}}, {}, True),
    ({"$or": [{"a": 1}, {"b": 1}]}, {"b": 1}, True),
    ({"$and": [{"a": 1}, {"b": 1}]}, {"b": 1}, False),
    ({"flag": True}, {"flag": True}, True),
    ({"id": "d1"}, {"id": "other"}, True),  # id addresses the envelope, not data
    ({"version": {"$gte": 1}}, {}, True),
    ({"createdBy": "key:a"}, {}, True),
    ({"s": {"$lt": "é"}}, {"s": "z"}, True),
]


@pytest.mark.parametrize(("raw", "data", "expected"), CASES)
def test_the_evaluator_and_the_compiled_sql_agree(raw: dict[str, Any], data: dict[str, Any], expected: bool) -> None:
    ast = parse(raw)
    assert matches(ast, env(data)) is expected
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE t (id TEXT, version INTEGER, created_at TEXT, created_by TEXT, updated_at TEXT, "
        "updated_by TEXT, data TEXT)"
    )
    db.execute(
        "INSERT INTO t VALUES ('d1', 1, '2026-01-01T00:00:00.000000Z', 'key:a', '2026-01-01T00:00:00.000000Z', "
        "'key:a', ?)",
        (json.dumps(data),),
    )
    sql, params = compile_filter(ast)
    assert "'" not in sql.replace("'integer'", "").replace("'real'", "").replace("'text'", "")  # values are parameters
    assert db.execute(f"SELECT COUNT(*) FROM t WHERE {sql}", params).fetchone()[0] == int(expected), (sql, params)


# -- the same queries on both backends ----------------------------------------------------------------------

VALUES: list[Any] = [None, 0, 1, 2.5, -3, True, False, "", "a", "b", "B", "é", "10", [1], {"x": "b"}]
QUERIES: list[dict[str, Any]] = [
    {},
    {"F": None},
    {"F": {"$ne": None}},
    {"F": 1},
    {"F": True},
    {"F": "a"},
    {"F": {"$ne": 1}},
    {"F": {"$gt": 0}},
    {"F": {"$gte": 1, "$lt": 3}},
    {"F": {"$lt": "b"}},
    {"F": {"$gte": "B"}},
    {"F": {"$lte": "é"}},
    {"F": {"$in": [1, "a", None]}},
    {"F": {"$nin": [0, "b"]}},
    {"F": {"$in": []}},
    {"F": {"$exists": True}},
    {"F": {"$exists": False}},
    {"$not": {"F": {"$gt": 1}}},
    {"$or": [{"F": "a"}, {"F": {"$lt": 0}}]},
    {"id": {"$gt": "d05"}},
    {"version": 1},
    {"id": 5},
]


def _documents() -> list[tuple[str, dict[str, Any]]]:
    """Every value in `n` (indexed) and `m` (not), and documents without either."""
    docs = [(f"d{i:02d}", {"n": v, "m": v}) for i, v in enumerate(VALUES)]
    return [*docs, ("d90", {}), ("d91", {"other": 1})]


@pytest.fixture
def filled(data_location: docstore.Location) -> Iterator[docstore.DocStore]:
    store = docstore.connect(data_location)
    store.sync_collections({"t": {"indexes": [{"fields": ["n"]}]}}, prune=False, force=False)
    writes = [StoredWrite("insert", "t", id_, 0, json.dumps(data)) for id_, data in _documents()]
    store.commit(GroupItem("acme", (), (), writes, ChangeMeta("key:a")))
    yield store
    store.close()


@pytest.mark.parametrize("field", ["n", "m"])
@pytest.mark.parametrize("raw", QUERIES, ids=[json.dumps(q) for q in QUERIES])
def test_a_query_finds_what_the_evaluator_matches_on_each_backend(
    filled: docstore.DocStore, raw: dict[str, Any], field: str
) -> None:
    ast = parse(json.loads(json.dumps(raw).replace('"F"', json.dumps(field))))
    found = [d.id for d in filled.find(Query("t", "acme", ast, (("id", False),), 1000))]
    expected = [id_ for id_, data in _documents() if matches(ast, env(data, id=id_))]
    assert found == expected, (filled.backend, raw)


@pytest.mark.parametrize("desc", [False, True])
def test_pages_in_order_of_a_field_of_mixed_types_are_the_same_on_each_backend(
    filled: docstore.DocStore, desc: bool
) -> None:
    """SQLite's order of values (NULL < numbers < text by code point), walked in pages of 2 with the keyset
    cursor. (Objects and arrays in an ordered field are left out: SQLite sorts them as their JSON text,
    PostgreSQL with NULL, and a cursor cannot carry them on either — docs/data.md.)"""
    store = filled
    plain = [(id_, d) for id_, d in _documents() if not isinstance(d.get("n"), dict | list)]
    for id_, _ in _documents():
        if id_ not in dict(plain):
            store.commit(GroupItem("acme", (), (), [StoredWrite("delete", "t", id_, 1, None)], ChangeMeta("key:a")))
    order = (("n", desc), ("id", desc))
    pages: list[str] = []
    after: tuple[Any, ...] | None = None
    while True:
        rows = store.find(Query("t", "acme", ALL, order, 2, after))
        pages += [r.id for r in rows]
        if len(rows) < 2:
            break
        last = document(rows[-1])
        after = (field_value(last, "n"), last.id)

    def rank(item: tuple[str, dict[str, Any]]) -> tuple[int, Any, str]:
        v = item[1].get("n")
        key = (0, 0) if v is None else (1, v) if isinstance(v, int | float) else (2, str(v).encode())
        return (*key, item[0])

    expected = [id_ for id_, _ in sorted(plain, key=rank, reverse=desc)]
    assert pages == expected, store.backend
