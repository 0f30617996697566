"""PostgreSQL's dialect of the document store (`POSTGRES`, see `docconn.Dialect`): the same semantics as
SQLite's (`docsql`) and as the pure evaluator `fnctl.data.filters.matches`, in PostgreSQL's terms.

- Documents are JSON text (`data text`, spliced into envelopes as it is, like SQLite's); queries read it as
  jsonb. An indexed field has two stored generated columns: `ixn_<h>` (numeric: the field's number, a
  boolean as 1/0, as SQLite's json_extract gives them) and `ixt_<h>` (text, collation "C": its string).
  Both NULL: missing, null, or an object/array. SQLite's order of values — NULL < numbers < text, strings by
  code point — is `ixt NULLS FIRST, ixn NULLS FIRST`, and indexes are built in that order.
- A unique index covers only rows whose fields are all present (SQLite's NULLs are distinct there), with
  NULLS NOT DISTINCT so that a number and a string in the same place never look unequal through a NULL.
- Writers serialise on one transaction-level advisory lock (`begin_write`), held until COMMIT: the change
  log's sequence is then gap-free in commit order, and a reader of `changes?since=N` never sees N+1 before N
  (a transaction is visible before its locks are released). Group commit shares one lock and one COMMIT.
- `data_version` moves when another connection committed: every write transaction NOTIFYs `fnctl_changes` on
  commit and the store's `docpg.ChangeFeed` LISTENs (no round trip per look; any gateway on any host).
"""

from __future__ import annotations

import hashlib
from typing import Any

from fnctl.manifest.filterlang import ORDERED, Compare, Filter, Op
from fnctl.state import auditchain, pg
from fnctl.state.datamigrations import PG_DATA_MIGRATIONS
from fnctl.state.docconn import CHANNEL, SCHEMA, DocConn, Head
from fnctl.state.docrecords import DataStoreError, Query
from fnctl.state.docsql import (
    META_COLUMNS,
    SIGNS,
    column,
    connect_filter,
    declared_indexes,
    fields_of,
    index_fields,
    match_values,
    select_sql,
    table,
)
from fnctl.state.pglocks import DOCS_MIGRATE_LOCK, DOCS_WRITE_LOCK

_TEXT_META = frozenset({"id", "createdAt", "createdBy", "updatedAt", "updatedBy"})


def num(field_path: str) -> str:
    return "ixn_" + column(field_path)[3:]


def txt(field_path: str) -> str:
    return "ixt_" + column(field_path)[3:]


def pg_path(field_path: str) -> str:
    """`a.b` → `{a,b}` for `#>` (segments are [A-Za-z0-9_-]: filterlang.valid_field)."""
    return "{" + ",".join(field_path.split(".")) + "}"


class _Postgres:
    name = "postgresql"
    Error = pg.DatabaseError
    IntegrityError = pg.IntegrityError

    def begin_write(self, db: DocConn) -> Head:
        # One round trip (a simple query of three statements): the transaction, the writers' lock, and the
        # change log's head as it stands under the lock (what the new changes chain onto).
        cursor: Any = db.execute(  # psycopg's cursor: a result per statement, nextset() to the next
            f"BEGIN; SELECT pg_advisory_xact_lock({DOCS_WRITE_LOCK}); SELECT seq, hash FROM changes ORDER BY seq DESC LIMIT 1"
        )
        cursor.nextset()
        cursor.nextset()
        row = cursor.fetchone()
        return (int(row[0]), str(row[1])) if row else (0, auditchain.GENESIS)

    def find_sql(self, query: Query, indexed: frozenset[str], columns: str) -> tuple[str, list[Any]]:
        order = ", ".join(_order(f, d) for f, d in query.order)
        return select_sql(query, columns, compile_filter(query.filter, indexed), _keyset, order)

    def migrate(self, db: DocConn) -> None:
        found = db.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = 'schema_version'",
            (SCHEMA,),
        ).fetchone()
        if found and _version(db) == len(PG_DATA_MIGRATIONS):
            return
        db.execute(f"BEGIN; SELECT pg_advisory_xact_lock({DOCS_MIGRATE_LOCK})")  # one process migrates at a time
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = _version(db)
            if version > len(PG_DATA_MIGRATIONS):
                raise DataStoreError(
                    f"the document store has schema version {version}, newer than this fnctl knows "
                    f"({len(PG_DATA_MIGRATIONS)}); upgrade fnctl"
                )
            for migration in PG_DATA_MIGRATIONS[version:]:
                db.execute(migration)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (len(PG_DATA_MIGRATIONS),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def create_or_alter(self, db: DocConn, name: str, spec: dict[str, Any]) -> None:
        tbl = table(name)
        db.execute(
            f'CREATE TABLE IF NOT EXISTS {tbl} (tenant TEXT COLLATE "C" NOT NULL, id TEXT COLLATE "C" NOT NULL, '
            'version INTEGER NOT NULL, created_at TEXT COLLATE "C" NOT NULL, created_by TEXT COLLATE "C" NOT NULL, '
            'updated_at TEXT COLLATE "C" NOT NULL, updated_by TEXT COLLATE "C" NOT NULL, data TEXT NOT NULL, '
            "PRIMARY KEY (tenant, id))"
        )
        columns = {
            r[0]
            for r in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                (SCHEMA, tbl),
            )
        }
        for path in sorted(index_fields(spec)):
            if path in META_COLUMNS or num(path) in columns:
                continue
            value = f"(data::jsonb #> '{pg_path(path)}')"
            db.execute(
                f"ALTER TABLE {tbl} ADD COLUMN {num(path)} NUMERIC GENERATED ALWAYS AS "
                f'({SCHEMA}.fnctl_num{value}) STORED, ADD COLUMN {txt(path)} TEXT COLLATE "C" '
                f"GENERATED ALWAYS AS ({SCHEMA}.fnctl_text{value}) STORED"
            )
        wanted = {}
        for digest, fields, unique in declared_indexes(spec):
            index = "ix_" + hashlib.sha256(f"{tbl}:{digest}".encode()).hexdigest()[:24]
            cols = ", ".join(["tenant", *(_index_columns(f) for f in fields)])
            if unique:
                present = " AND ".join(
                    f"({num(f)} IS NOT NULL OR {txt(f)} IS NOT NULL)" for f in fields if f not in META_COLUMNS
                )
                wanted[index] = f"CREATE UNIQUE INDEX {index} ON {tbl} ({cols}) NULLS NOT DISTINCT" + (
                    f" WHERE {present}" if present else ""
                )
            else:
                wanted[index] = f"CREATE INDEX {index} ON {tbl} ({cols})"
        existing = {
            r[0]
            for r in db.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = ? AND tablename = ? AND indexname LIKE 'ix\\_%'",
                (SCHEMA, tbl),
            )
        }
        for old in sorted(existing - set(wanted)):
            db.execute(f"DROP INDEX {old}")
        for new in sorted(set(wanted) - existing):
            db.execute(wanted[new])

    def unique_fields(self, indexed: dict[str, frozenset[str]], exc: Exception) -> tuple[str, str] | None:
        """From the violation's table and its detail, `Key (tenant, ixt_…, ixn_…)=(…) already exists.`"""
        if not isinstance(exc, pg.UniqueViolation):
            return None
        detail = exc.diag.message_detail or ""
        inside = detail.partition("(")[2].partition(")=")[0]
        cols: list[str] = []
        for name in (c.strip() for c in inside.split(",")):
            name = "ix_" + name[4:] if name.startswith(("ixn_", "ixt_")) else name
            if name not in cols:
                cols.append(name)
        return fields_of(indexed, exc.diag.table_name or "", cols)

    def data_version(self, db: DocConn) -> int:
        """Without a ChangeFeed (which DocStore keeps): the change log's last seq, one round trip."""
        return int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def announce(self, db: DocConn, last_seq: int) -> None:
        # Held with the transaction's writes (no round trip of its own), delivered when it commits.
        db.hold("SELECT pg_notify(?, ?)", (CHANNEL, str(last_seq)))


POSTGRES = _Postgres()


def _version(db: DocConn) -> int:
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _index_columns(field_path: str) -> str:
    meta = META_COLUMNS.get(field_path)
    return meta if meta else f"{txt(field_path)} NULLS FIRST, {num(field_path)} NULLS FIRST"


def _order(field_path: str, desc: bool) -> str:
    meta = META_COLUMNS.get(field_path)
    if meta:
        return f"{meta} {'DESC' if desc else 'ASC'}"
    if desc:
        return f"{txt(field_path)} DESC NULLS LAST, {num(field_path)} DESC NULLS LAST"
    return f"{txt(field_path)} ASC NULLS FIRST, {num(field_path)} ASC NULLS FIRST"


# -- filters → SQL ----------------------------------------------------------------------------------------


def compile_filter(ast: Filter, indexed: frozenset[str] = frozenset()) -> tuple[str, list[Any]]:
    """`ast` as a boolean SQL condition (never NULL) and its parameters: `matches`' semantics."""
    params: list[Any] = []
    return connect_filter(ast, "TRUE", lambda leaf: _leaf(leaf, indexed, params)), params


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)  # booleans too: numbers, as SQLite stores them


def _leaf(ast: Compare, indexed: frozenset[str], params: list[Any]) -> str:
    field, op, value = ast.field, ast.op, ast.value
    meta = META_COLUMNS.get(field)
    if op is Op.EXISTS:
        if meta:
            return "TRUE" if value else "FALSE"
        params.append(pg_path(field))
        return f"((data::jsonb #> ?::text[]) IS {'NOT ' if value else ''}NULL)"

    def scalar(numeric: bool) -> str:
        """The field's number (numeric) or string (text, collation C); NULL when it holds another type."""
        if meta:
            return meta if numeric == (field == "version") else "NULL"
        if field in indexed:
            return num(field) if numeric else txt(field)
        params.append(pg_path(field))
        return "fnctl_num(data::jsonb #> ?::text[])" if numeric else 'fnctl_text(data::jsonb #> ?::text[]) COLLATE "C"'

    def compare(sign: str, v: Any) -> str:
        numeric = _is_number(v)
        expr = scalar(numeric)
        params.append(float(v) if isinstance(v, float) else int(v) if numeric else v)
        return f"COALESCE({expr} {sign} ?{'::numeric' if numeric else '::text'}, FALSE)"

    def equal(v: Any) -> str:
        if v is None:
            if meta:
                return "FALSE"
            params.append(pg_path(field))
            return "(COALESCE(jsonb_typeof(data::jsonb #> ?::text[]), 'null') = 'null')"
        return compare("=", v)

    if op not in ORDERED:
        return match_values(op, value, equal, "FALSE")
    return compare(SIGNS[op], value)


def _rank(value: Any) -> int:
    """SQLite's order of values: NULL < numbers < text."""
    return 0 if value is None else 1 if _is_number(value) else 2


def _keyset(order: tuple[tuple[str, bool], ...], after: tuple[Any, ...]) -> tuple[str, list[Any]]:
    """Rows strictly after `after` in `order` (SQLite's order of values, whatever their types)."""
    ors: list[str] = []
    params: list[Any] = []
    for i, (name, desc) in enumerate(order):
        ands = [_equal_key(prev, after[j], params) for j, (prev, _) in enumerate(order[:i])]
        ands.append(_after_key(name, desc, after[i], params))
        ors.append("(" + " AND ".join(ands) + ")")
    return "(" + " OR ".join(ors) + ")", params


def _equal_key(name: str, value: Any, params: list[Any]) -> str:
    value = int(value) if isinstance(value, bool) else value
    meta = META_COLUMNS.get(name)
    if meta:
        if _rank(value) != (1 if name == "version" else 2):
            return "FALSE"
        params.append(value)
        return f"{meta} = ?"
    if value is None:
        return f"({txt(name)} IS NULL AND {num(name)} IS NULL)"
    params.append(value)
    return f"{num(name)} = ?::numeric" if _is_number(value) else f"{txt(name)} = ?::text"


def _after_key(name: str, desc: bool, value: Any, params: list[Any]) -> str:
    value = int(value) if isinstance(value, bool) else value
    meta = META_COLUMNS.get(name)
    rank = _rank(value)
    if meta:
        own = 1 if name == "version" else 2
        if own != rank:
            return "TRUE" if (own > rank) != desc else "FALSE"
        params.append(value)
        return f"{meta} {'<' if desc else '>'} ?"
    n, t = num(name), txt(name)
    params.extend([] if value is None else [value])
    if not desc:
        return {
            0: f"({t} IS NOT NULL OR {n} IS NOT NULL)",
            1: f"({t} IS NOT NULL OR {n} > ?::numeric)",
            2: f"{t} > ?::text",
        }[rank]
    return {
        0: "FALSE",
        1: f"({n} < ?::numeric OR ({t} IS NULL AND {n} IS NULL))",
        2: f"({t} < ?::text OR {t} IS NULL)",
    }[rank]
