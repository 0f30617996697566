"""The document store's queries: naming (one table per collection, `docs_<name>`; one generated column per
indexed field), the portable reads (rows by id in chunks, a query's rows), and SQLite's dialect
(`SQLITE`, see `docconn.Dialect`): filters compiled to SQL with parameters only, keyset pagination, the data
file's migrations, generated columns and indexes. Filters arrive as the AST of `fnctl.manifest.filterlang`;
every leaf is 0 or 1, never NULL, so `$not` means what it says, and the semantics are
`fnctl.data.filters.matches`'. PostgreSQL's dialect is `docsqlpg`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from fnctl.manifest.filterlang import ORDERED, Always, And, Compare, Filter, Not, Op, Or
from fnctl.state import auditchain
from fnctl.state.datamigrations import DATA_MIGRATIONS
from fnctl.state.docconn import DocConn, Head
from fnctl.state.docrecords import JSON, DataStoreError, Query, StoredDoc
from fnctl.state.migrations import apply_migrations

META_COLUMNS = {
    "id": "id",
    "version": "version",
    "createdAt": "created_at",
    "createdBy": "created_by",
    "updatedAt": "updated_at",
    "updatedBy": "updated_by",
}
DOC_COLUMNS = "tenant, id, version, created_at, created_by, updated_at, updated_by, data"
CHAIN = "changes"  # the change log's hash chain (auditchain)
CHANGE_COLUMNS = ", ".join(n for n, _ in auditchain.CHANGE_FIELDS) + ", prev_hash, hash"


def table(collection: str) -> str:
    return "docs_" + collection.replace("-", "_")


def column(field_path: str) -> str:
    """The generated column of an indexed data field (or the envelope's own column)."""
    meta = META_COLUMNS.get(field_path)
    return meta if meta else "ix_" + hashlib.sha256(field_path.encode()).hexdigest()[:16]


def json_path(field_path: str) -> str:
    """`a.b` → `$."a"."b"` (segments are [A-Za-z0-9_-]: filterlang.valid_field)."""
    return "$" + "".join(f'."{s}"' for s in field_path.split("."))


def index_fields(spec: dict[str, Any]) -> frozenset[str]:
    return frozenset(f for index in spec.get("indexes", ()) for f in index["fields"])


def find_rows(db: DocConn, indexed: frozenset[str], query: Query) -> list[StoredDoc]:
    """The rows of `query` (`indexed`: the collection's fields with a generated column)."""
    sql, params = db.dialect.find_sql(query, indexed, DOC_COLUMNS)
    return [StoredDoc(*r) for r in db.execute(sql, params)]


CHUNK = 500  # ids per `IN (...)` (SQLite's default limit of host parameters is 32,766)


def rows_by_id(db: DocConn, collection: str, tenant: str, ids: Sequence[str]) -> Iterator[StoredDoc]:
    tbl = table(collection)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        marks = ", ".join("?" * len(chunk))
        for row in db.execute(
            f"SELECT {DOC_COLUMNS} FROM {tbl} WHERE tenant = ? AND id IN ({marks})", (tenant, *chunk)
        ):
            yield StoredDoc(*row)


def versions(db: DocConn, collection: str, tenant: str, ids: Sequence[str]) -> dict[str, int]:
    tbl = table(collection)
    found: dict[str, int] = {}
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        marks = ", ".join("?" * len(chunk))
        found.update(
            db.execute(
                f"SELECT id, version FROM {tbl} WHERE tenant = ? AND id IN ({marks})", (tenant, *chunk)
            ).fetchall()
        )
    return found


# -- filters → SQL ----------------------------------------------------------------------------------------


def compile_filter(ast: Filter, indexed: Iterable[str] = ()) -> tuple[str, list[Any]]:
    """`ast` as a SQL condition (0 or 1, never NULL) and its parameters. Indexed fields read their generated
    column; the others `json_extract(data, ?)`."""
    params: list[Any] = []
    fields = frozenset(indexed)
    return connect_filter(ast, "1", lambda leaf: _leaf(leaf, fields, params)), params


def connect_filter(ast: Filter, always: str, leaf: Callable[[Compare], str]) -> str:
    """`ast`'s $and/$or/$not as SQL around its comparisons, each written by `leaf` (which appends its
    parameters: they are visited in the order they stand in the SQL); `always` is the dialect's true."""
    if isinstance(ast, Always):
        return always
    if isinstance(ast, And | Or):
        joint = " AND " if isinstance(ast, And) else " OR "
        return "(" + joint.join(connect_filter(p, always, leaf) for p in ast.parts) + ")"
    if isinstance(ast, Not):
        return f"(NOT {connect_filter(ast.part, always, leaf)})"
    return leaf(ast)


SIGNS = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}  # the ORDERED operators in SQL


def match_values(op: Op, value: Any, equal: Callable[[Any], str], false: str) -> str:
    """$eq, $ne, $in or $nin in either dialect, from its test of one value (`equal`, which appends its
    parameters); `false` is the dialect's false (an empty $in)."""
    if op in (Op.EQ, Op.NE):
        cond = equal(value)
        return cond if op is Op.EQ else f"(NOT {cond})"
    assert op in (Op.IN, Op.NIN) and isinstance(value, tuple)
    parts = [equal(v) for v in value]
    cond = "(" + " OR ".join(parts) + ")" if parts else false
    return cond if op is Op.IN else f"(NOT {cond})"


def _leaf(ast: Compare, indexed: frozenset[str], params: list[Any]) -> str:
    meta = META_COLUMNS.get(ast.field)
    path = json_path(ast.field)
    expr_params: list[Any]
    if meta is not None:
        expr, expr_params = meta, []
    elif ast.field in indexed:
        expr, expr_params = column(ast.field), []
    else:
        expr, expr_params = "json_extract(data, ?)", [path]
    op, value = ast.op, ast.value

    def equal(v: Any) -> str:
        params.extend(expr_params)
        if v is None:
            return f"({expr} IS NULL)"
        params.append(v)
        return f"COALESCE({expr} = ?, 0)"

    if op is Op.EXISTS:
        if meta is not None:
            return "1" if value else "0"
        params.append(path)
        return f"(json_type(data, ?) IS {'NOT ' if value else ''}NULL)"
    if op not in ORDERED:
        return match_values(op, value, equal, "0")
    sign = SIGNS[op]
    if isinstance(value, int | float):
        params.extend([*expr_params, *expr_params, value])
        return f"(typeof({expr}) IN ('integer', 'real') AND {expr} {sign} ?)"
    if meta is not None:
        params.append(value)
        return f"(typeof({expr}) = 'text' AND {expr} {sign} ?)"
    params.extend([path, *expr_params, value])
    return f"(json_type(data, ?) = 'text' AND {expr} {sign} ?)"


Keyset = Callable[[tuple[tuple[str, bool], ...], tuple[Any, ...]], tuple[str, list[Any]]]


def select_sql(
    query: Query, columns: str, where: tuple[str, list[Any]], keyset: Keyset, order_by: str
) -> tuple[str, list[Any]]:
    """A find's SELECT in either dialect: the tenant's rows matching `where` (the compiled filter), after
    the query's keyset (`keyset`: the dialect's condition for it), in `order_by`, up to the query's limit."""
    condition, params = where
    sql = f"SELECT {columns} FROM {table(query.collection)} WHERE tenant = ? AND {condition}"
    all_params: list[Any] = [query.tenant, *params]
    if query.after is not None:
        after, after_params = keyset(query.order, query.after)
        sql += f" AND {after}"
        all_params += after_params
    sql += f" ORDER BY {order_by} LIMIT ?"
    all_params.append(query.limit)
    return sql, all_params


def _keyset(order: tuple[tuple[str, bool], ...], after: tuple[Any, ...]) -> tuple[str, list[Any]]:
    """Rows strictly after `after` in `order` (SQLite's order: NULL first ascending, last descending)."""
    ors: list[str] = []
    params: list[Any] = []
    for i, (name, desc) in enumerate(order):
        ands: list[str] = []
        for j, (prev_name, _) in enumerate(order[:i]):
            ands.append(f"{column(prev_name)} IS ?")
            params.append(after[j])
        col, value = column(name), after[i]
        if value is None:
            ands.append("0" if desc else f"{col} IS NOT NULL")
        else:
            ands.append(f"({col} < ? OR {col} IS NULL)" if desc else f"{col} > ?")
            params.append(value)
        ors.append("(" + " AND ".join(ands) + ")")
    return "(" + " OR ".join(ors) + ")", params


# -- SQLite's dialect ---------------------------------------------------------------------------------------


class _Sqlite:
    name = "sqlite"
    Error = sqlite3.Error
    IntegrityError = sqlite3.IntegrityError

    def begin_write(self, db: DocConn) -> Head | None:
        db.execute("BEGIN IMMEDIATE")  # the file's one writer at a time
        return None  # the head is read when needed: a read costs SQLite no round trip

    def find_sql(self, query: Query, indexed: frozenset[str], columns: str) -> tuple[str, list[Any]]:
        order = ", ".join(f"{column(f)} {'DESC' if d else 'ASC'}" for f, d in query.order)
        return select_sql(query, columns, compile_filter(query.filter, indexed), _keyset, order)

    def migrate(self, db: DocConn) -> None:
        assert isinstance(db, sqlite3.Connection)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(DATA_MIGRATIONS):
            raise DataStoreError(
                f"the data file has schema version {version}, newer than this fnctl knows "
                f"({len(DATA_MIGRATIONS)}); upgrade fnctl"
            )
        apply_migrations(db, version, DATA_MIGRATIONS)

    def create_or_alter(self, db: DocConn, name: str, spec: dict[str, Any]) -> None:
        tbl = table(name)
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {tbl} (tenant TEXT NOT NULL, id TEXT NOT NULL, "
            "version INTEGER NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL, "
            "updated_at TEXT NOT NULL, updated_by TEXT NOT NULL, data TEXT NOT NULL, "
            "PRIMARY KEY (tenant, id))"
        )
        columns = {row[1] for row in db.execute(f"PRAGMA table_xinfo({tbl})")}
        for path in sorted(index_fields(spec)):
            col = column(path)
            if col not in columns:
                db.execute(
                    f"ALTER TABLE {tbl} ADD COLUMN {col} GENERATED ALWAYS AS "
                    f"(json_extract(data, '{json_path(path)}')) VIRTUAL"
                )
        wanted = {
            f"{tbl}_ix_{digest}": f"CREATE {'UNIQUE ' if unique else ''}INDEX {tbl}_ix_{digest} ON {tbl} "
            f"({', '.join(['tenant', *(column(f) for f in fields)])})"
            for digest, fields, unique in declared_indexes(spec)
        }
        existing = {
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name LIKE ?",
                (tbl, f"{tbl}_ix_%"),
            )
        }
        for old in sorted(existing - set(wanted)):
            db.execute(f"DROP INDEX {old}")
        for new in sorted(set(wanted) - existing):
            db.execute(wanted[new])

    def unique_fields(self, indexed: dict[str, frozenset[str]], exc: Exception) -> tuple[str, str] | None:
        """From SQLite's `UNIQUE constraint failed: docs_x.tenant, docs_x.ix_...`."""
        message = str(exc)
        if "UNIQUE" not in message:
            return None
        names = [part.strip() for part in message.split(":", 1)[-1].split(",")]
        return fields_of(indexed, names[0].split(".")[0] if names else "", [n.split(".")[-1] for n in names])

    def data_version(self, db: DocConn) -> int:
        return int(db.execute("PRAGMA data_version").fetchone()[0])

    def announce(self, db: DocConn, last_seq: int) -> None:
        pass  # other connections see the file's data_version move


SQLITE = _Sqlite()


def declared_indexes(spec: dict[str, Any]) -> list[tuple[str, list[str], bool]]:
    """A collection's indexes: (a digest naming it, its fields, unique)."""
    found = []
    for index in spec.get("indexes", ()):
        fields, unique = list(index["fields"]), bool(index.get("unique", False))
        found.append((hashlib.sha256(JSON([fields, unique]).encode()).hexdigest()[:16], fields, unique))
    return found


def fields_of(indexed: dict[str, frozenset[str]], tbl: str, columns: Sequence[str]) -> tuple[str, str]:
    """(collection, fields) of a unique index that refused a write, from its table and columns."""
    for name, spec_fields in indexed.items():
        if table(name) == tbl:
            by_column = {column(f): f for f in spec_fields}
            return name, ", ".join(by_column.get(c, c) for c in columns if c != "tenant")
    return tbl, ", ".join(columns)
