"""The document store: ALL of the data plane's SQL, in a SQLite file of its own (WAL) beside the deployment
store (`data_path`). Portable SQL where it can be, so that PostgreSQL can implement the same `DocStore`.

One table per collection, `docs_<name>` (`-` → `_`), keyed (tenant, id), with one generated VIRTUAL column per
indexed field (`json_extract(data, '$."a"."b"')`) and real indexes (tenant first). `changes` is the append-only,
hash-chained change log (`fnctl.state.auditchain`, chain "changes"). `idempotency` remembers inserts by key.

Filters arrive as the AST of `fnctl.manifest.filterlang` and compile to SQL with parameters only; every leaf
is 0 or 1, never NULL, so `$not` means what it says, and the semantics are `fnctl.data.filters.matches`'.
`commit` is the one write path: one `BEGIN IMMEDIATE` that validates the versions a transaction read, applies
its writes and appends their changes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from fnctl.errors import FnctlError
from fnctl.manifest.filterlang import ORDERED, Always, And, Compare, Filter, Not, Op, Or
from fnctl.state import auditchain
from fnctl.state.datamigrations import DATA_MIGRATIONS

CHAIN = "changes"
_META_COLUMNS = {
    "id": "id",
    "version": "version",
    "createdAt": "created_at",
    "createdBy": "created_by",
    "updatedAt": "updated_at",
    "updatedBy": "updated_by",
}
_DOC_COLUMNS = "tenant, id, version, created_at, created_by, updated_at, updated_by, data"
_CHANGE_COLUMNS = ", ".join(n for n, _ in auditchain.CHANGE_FIELDS) + ", prev_hash, hash"
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_quote: Callable[[str], str] = encode_basestring  # what _JSON does to a str (ensure_ascii=False)


class DataStoreError(FnctlError):
    """The data file cannot be opened, read or written."""


class StaleWrite(Exception):
    """A version read or written on changed: `index` is the write concerned (None: a read or a find)."""

    def __init__(self, index: int | None) -> None:
        super().__init__(index)
        self.index = index


class UniqueViolation(Exception):
    def __init__(self, collection: str, fields: str) -> None:
        super().__init__(collection, fields)
        self.collection, self.fields = collection, fields


class IdempotentReplay(Exception):
    """An insert's Idempotency-Key was used by a transaction that committed first: its response."""

    def __init__(self, response: str) -> None:
        super().__init__("replay")
        self.response = response


class NotEmpty(DataStoreError):
    """Collections that still hold documents would be dropped."""


@dataclass(frozen=True)
class StoredDoc:
    tenant: str
    id: str
    version: int
    created_at: str
    created_by: str
    updated_at: str
    updated_by: str
    data: str  # the JSON text

    def envelope_text(self) -> str:
        """`_JSON(self.envelope())`, without decoding and encoding the data again."""
        return _envelope(self)

    def envelope(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "updatedAt": self.updated_at,
            "updatedBy": self.updated_by,
            "data": json.loads(self.data),
        }


@dataclass(frozen=True)
class CollectionRow:
    name: str
    spec: dict[str, Any]
    version: int


@dataclass(frozen=True)
class Query:
    collection: str
    tenant: str
    filter: Filter
    order: tuple[tuple[str, bool], ...]  # (field, descending), ending with id
    limit: int
    after: tuple[Any, ...] | None = None  # the cursor: the last row's order values


@dataclass(frozen=True)
class ReadCheck:
    collection: str
    tenant: str
    id: str
    version: int  # 0: was absent


@dataclass(frozen=True)
class StoredWrite:
    op: str  # insert | replace | delete
    collection: str
    id: str
    expected: int  # the version it is based on (0: must not exist)
    data: str | None
    before: StoredDoc | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class ChangeMeta:
    actor: str
    function: str | None = None
    revision: int | None = None


@dataclass(frozen=True)
class GroupItem:
    """One transaction of a group commit (`DocStore.commit_group`): `commit`'s arguments."""

    tenant: str
    reads: Sequence[ReadCheck]
    finds: Sequence[tuple[Query, tuple[tuple[str, int], ...]]]
    writes: Sequence[StoredWrite]
    meta: ChangeMeta


@dataclass(frozen=True)
class ChangeRow:
    seq: int
    txn: str
    at: str
    collection: str
    tenant: str
    id: str
    op: str
    before: str | None
    after: str | None
    actor: str
    function: str | None
    revision: int | None


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def data_path(state_file: Path) -> Path:
    """The data file beside the deployment store: `<dir>/<stem>.data.db`."""
    return state_file.with_name(f"{state_file.stem}.data.db")


def table(collection: str) -> str:
    return "docs_" + collection.replace("-", "_")


def column(field_path: str) -> str:
    """The generated column of an indexed data field (or the envelope's own column)."""
    meta = _META_COLUMNS.get(field_path)
    return meta if meta else "ix_" + hashlib.sha256(field_path.encode()).hexdigest()[:16]


def json_path(field_path: str) -> str:
    """`a.b` → `$."a"."b"` (segments are [A-Za-z0-9_-]: filterlang.valid_field)."""
    return "$" + "".join(f'."{s}"' for s in field_path.split("."))


_second: tuple[int, str] = (-1, "")  # the last whole second formatted: (seconds, "YYYY-MM-DDTHH:MM:SS")


def timestamp() -> str:
    """RFC 3339 UTC with microseconds, as `datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")` gives it, with
    the seconds part formatted once per second (strftime was a tenth of an insert's time). The cache is one
    tuple, replaced whole, so threads never see a second's text with another second's number."""
    global _second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second
    if cached[0] != seconds:
        cached = _second = (seconds, datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micros:06d}Z"


class DocStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._indexed: dict[str, frozenset[str]] = {}  # collection → fields with a generated column
        self._db()  # open (and migrate) now, so errors surface here
        self._load_indexed()

    # -- connections ------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                _migrate(db)
            except sqlite3.Error as exc:
                raise DataStoreError(f"cannot open the data file {self.path}: {exc}") from None
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    # -- collections ------------------------------------------------------------------------------------

    def collections(self) -> dict[str, CollectionRow]:
        rows = self._db().execute("SELECT name, spec, version FROM collections").fetchall()
        result = {name: CollectionRow(name, json.loads(spec), int(version)) for name, spec, version in rows}
        self._indexed = {n: _index_fields(c.spec) for n, c in result.items()}
        return result

    def _load_indexed(self) -> None:
        self.collections()

    def count(self, collection: str) -> int:
        return int(self._db().execute(f"SELECT COUNT(*) FROM {table(collection)}").fetchone()[0])

    def sync_collections(self, specs: dict[str, dict[str, Any]], prune: bool, force: bool) -> SyncResult:
        """Make the collections' tables and indexes those of `specs` (name → Collection spec), in one
        transaction. Dropping a non-empty collection needs `force` (else NotEmpty, nothing changed)."""
        db = self._db()
        result = SyncResult()
        db.execute("BEGIN IMMEDIATE")
        try:
            current = {
                n: (json.loads(s), int(v)) for n, s, v in db.execute("SELECT name, spec, version FROM collections")
            }
            gone = sorted(set(current) - set(specs)) if prune else []
            full = [n for n in gone if db.execute(f"SELECT 1 FROM {table(n)} LIMIT 1").fetchone()]
            if full and not force:
                raise NotEmpty(
                    f"refusing to drop collection(s) that still hold documents: {', '.join(full)} "
                    "(apply --prune --force drops them with their documents)"
                )
            for name, spec in sorted(specs.items()):
                old = current.get(name)
                if old is not None and old[0] == spec:
                    result.unchanged.append(name)
                    continue
                self._create_or_alter(db, name, spec)
                db.execute(
                    "INSERT INTO collections VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "spec = excluded.spec, version = excluded.version",
                    (name, _JSON(spec), (old[1] + 1) if old else 1),
                )
                (result.updated if old else result.created).append(name)
            for name in gone:
                db.execute(f"DROP TABLE IF EXISTS {table(name)}")
                db.execute("DELETE FROM collections WHERE name = ?", (name,))
                db.execute("DELETE FROM idempotency WHERE collection = ?", (name,))
                result.dropped.append(name)
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            raise DataStoreError(
                f"cannot create a unique index: existing documents have duplicate values ({exc})"
            ) from None
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.collections()
        return result

    def _create_or_alter(self, db: sqlite3.Connection, name: str, spec: dict[str, Any]) -> None:
        tbl = table(name)
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {tbl} (tenant TEXT NOT NULL, id TEXT NOT NULL, "
            "version INTEGER NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL, "
            "updated_at TEXT NOT NULL, updated_by TEXT NOT NULL, data TEXT NOT NULL, "
            "PRIMARY KEY (tenant, id))"
        )
        columns = {row[1] for row in db.execute(f"PRAGMA table_xinfo({tbl})")}
        for path in sorted(_index_fields(spec)):
            col = column(path)
            if col not in columns:
                db.execute(
                    f"ALTER TABLE {tbl} ADD COLUMN {col} GENERATED ALWAYS AS "
                    f"(json_extract(data, '{json_path(path)}')) VIRTUAL"
                )
        wanted: dict[str, str] = {}
        for index in spec.get("indexes", ()):
            fields = list(index["fields"])
            unique = bool(index.get("unique", False))
            digest = hashlib.sha256(_JSON([fields, unique]).encode()).hexdigest()[:16]
            cols = ", ".join(["tenant", *(column(f) for f in fields)])
            wanted[f"{tbl}_ix_{digest}"] = (
                f"CREATE {'UNIQUE ' if unique else ''}INDEX {tbl}_ix_{digest} ON {tbl} ({cols})"
            )
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

    # -- reads ------------------------------------------------------------------------------------------

    def get(self, collection: str, tenant: str, id: str) -> StoredDoc | None:
        try:
            row = (
                self._db()
                .execute(f"SELECT {_DOC_COLUMNS} FROM {table(collection)} WHERE tenant = ? AND id = ?", (tenant, id))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot read {collection}: {exc}") from None
        return None if row is None else StoredDoc(*row)

    def get_many(self, collection: str, tenant: str, ids: Sequence[str]) -> dict[str, StoredDoc]:
        """The documents of `ids` that exist, by id, in one query per CHUNK ids."""
        try:
            return {row.id: row for row in _rows_by_id(self._db(), collection, tenant, ids)}
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot read {collection}: {exc}") from None

    def find(self, query: Query) -> list[StoredDoc]:
        try:
            return self._find(self._db(), query)
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot read {query.collection}: {exc}") from None

    def _find(self, db: sqlite3.Connection, query: Query) -> list[StoredDoc]:
        indexed = self._indexed.get(query.collection, frozenset())
        where, params = compile_filter(query.filter, indexed)
        sql = f"SELECT {_DOC_COLUMNS} FROM {table(query.collection)} WHERE tenant = ? AND {where}"
        all_params: list[Any] = [query.tenant, *params]
        if query.after is not None:
            after, after_params = _keyset(query.order, query.after)
            sql += f" AND {after}"
            all_params += after_params
        order = ", ".join(f"{column(f)} {'DESC' if d else 'ASC'}" for f, d in query.order)
        sql += f" ORDER BY {order} LIMIT ?"
        all_params.append(query.limit)
        return [StoredDoc(*r) for r in db.execute(sql, all_params)]

    def scan(self, collection: str, tenant: str | None = None, batch: int = 1000) -> Iterator[StoredDoc]:
        """Every document of a collection (one tenant's, or all), by (tenant, id), in batches."""
        last: tuple[str, str] = ("", "")
        first = True
        tbl = table(collection)
        while True:
            cond, params = ("(tenant, id) > (?, ?)", [*last]) if not first else ("1", [])
            if tenant is not None:
                cond += " AND tenant = ?"
                params.append(tenant)
            rows = (
                self._db()
                .execute(f"SELECT {_DOC_COLUMNS} FROM {tbl} WHERE {cond} ORDER BY tenant, id LIMIT ?", (*params, batch))
                .fetchall()
            )
            if not rows:
                return
            for row in rows:
                yield StoredDoc(*row)
            last, first = (rows[-1][0], rows[-1][1]), False

    def idempotent(self, tenant: str, collection: str, key: str) -> str | None:
        row = (
            self._db()
            .execute(
                "SELECT response FROM idempotency WHERE tenant = ? AND collection = ? AND key = ?",
                (tenant, collection, key),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def changes(self, since: int, tenant: str, collections: Sequence[str], limit: int) -> list[ChangeRow]:
        if not collections:
            return []
        marks = ", ".join("?" * len(collections))
        rows = self._db().execute(
            "SELECT seq, txn, at, collection, tenant, id, op, before, after, actor, function, revision FROM changes "
            f"WHERE tenant = ? AND seq > ? AND collection IN ({marks}) ORDER BY seq LIMIT ?",
            (tenant, since, *collections, limit),
        )
        return [ChangeRow(*r) for r in rows]

    def change_chain(self) -> Iterator[tuple[Any, ...]]:
        """Every change with its links, by seq (for auditchain.verify("changes", ...))."""
        yield from self._db().execute(f"SELECT {_CHANGE_COLUMNS} FROM changes ORDER BY seq")

    def change_head(self) -> str | None:
        row = (
            self._db().execute("SELECT value FROM settings WHERE key = ?", (auditchain.head_setting(CHAIN),)).fetchone()
        )
        return None if row is None else str(row[0])

    def verify_changes(self) -> auditchain.ChainReport:
        return auditchain.verify(CHAIN, self.change_chain(), self.change_head())

    def change_hash_known(self, digest: str) -> bool:
        """Whether a change has this hash (an anchor kept outside the data file)."""
        return self._db().execute("SELECT 1 FROM changes WHERE hash = ? LIMIT 1", (digest,)).fetchone() is not None

    # -- the write path ---------------------------------------------------------------------------------

    def commit(
        self,
        tenant: str,
        reads: Sequence[ReadCheck],
        finds: Sequence[tuple[Query, tuple[tuple[str, int], ...]]],
        writes: Sequence[StoredWrite],
        meta: ChangeMeta,
    ) -> list[StoredDoc | None]:
        """One short write transaction: check that what was read is unchanged (StaleWrite(None)) and that every
        write's base version is current (StaleWrite(i)), apply the writes, append their changes, record
        idempotency keys. The new rows, None for deletes. Nothing is written when it raises."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot write the data file: {exc}") from None
        try:
            result = self._commit(db, tenant, reads, finds, writes, meta)
            db.execute("COMMIT")
            return result
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            message = str(exc)
            if "UNIQUE" in message:
                raise UniqueViolation(*self._unique_fields(message)) from None
            raise DataStoreError(f"cannot write the data file: {exc}") from None
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise DataStoreError(f"cannot write the data file: {exc}") from None
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def commit_group(self, items: Sequence[GroupItem]) -> list[list[StoredDoc | None] | Exception]:
        """Several independent transactions in ONE write transaction (what concurrent single writes share:
        one BEGIN, one COMMIT, one append to the change log): each in a savepoint of its own, so that each is
        still all or nothing and fails alone (StaleWrite, UniqueViolation, IdempotentReplay: its exception in
        its place); the others commit. Every change is chained as with `commit`."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot write the data file: {exc}") from None
        out: list[list[StoredDoc | None] | Exception] = []
        changes: list[tuple[Any, ...]] = []
        try:
            for item in items:
                db.execute("SAVEPOINT grouped")
                mark = len(changes)
                try:
                    out.append(
                        self._commit(db, item.tenant, item.reads, item.finds, item.writes, item.meta, into=changes)
                    )
                except (StaleWrite, IdempotentReplay, sqlite3.IntegrityError) as exc:
                    db.execute("ROLLBACK TO grouped")
                    del changes[mark:]
                    message = str(exc)
                    out.append(
                        UniqueViolation(*self._unique_fields(message))
                        if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in message
                        else DataStoreError(f"cannot write the data file: {exc}")
                        if isinstance(exc, sqlite3.IntegrityError)
                        else exc
                    )
                db.execute("RELEASE grouped")
            self._append_changes(db, changes)
            db.execute("COMMIT")
            return out
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise DataStoreError(f"cannot write the data file: {exc}") from None
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _commit(
        self,
        db: sqlite3.Connection,
        tenant: str,
        reads: Sequence[ReadCheck],
        finds: Sequence[tuple[Query, tuple[tuple[str, int], ...]]],
        writes: Sequence[StoredWrite],
        meta: ChangeMeta,
        into: list[tuple[Any, ...]] | None = None,
    ) -> list[StoredDoc | None]:
        """Check and apply one transaction's writes; its change rows are appended to the log, or to `into`
        (a group commit appends all its transactions' rows at once, in order)."""
        # What was read: unchanged? One query per collection (and CHUNK ids), not one per document.
        read_ids: dict[tuple[str, str], list[ReadCheck]] = {}
        for read in reads:
            read_ids.setdefault((read.collection, read.tenant), []).append(read)
        for (collection, read_tenant), checks in read_ids.items():
            versions = _versions(db, collection, read_tenant, [r.id for r in checks])
            if any(versions.get(r.id, 0) != r.version for r in checks):
                raise StaleWrite(None)
        for query, seen in finds:
            if tuple((r.id, r.version) for r in self._find(db, query)) != seen:
                raise StaleWrite(None)
        # What is written on: at the version each write is based on? Again one query per collection.
        by_collection: dict[str, list[str]] = {}
        for write in writes:
            by_collection.setdefault(write.collection, []).append(write.id)
        current = {(c, row.id): row for c, ids in by_collection.items() for row in _rows_by_id(db, c, tenant, ids)}
        for i, write in enumerate(writes):
            if write.idempotency_key is not None:
                row = db.execute(
                    "SELECT response FROM idempotency WHERE tenant = ? AND collection = ? AND key = ?",
                    (tenant, write.collection, write.idempotency_key),
                ).fetchone()
                if row is not None:
                    raise IdempotentReplay(str(row[0]))
            before = current.get((write.collection, write.id))
            if (before.version if before else 0) != write.expected:
                raise StaleWrite(i)
        now, txn = timestamp(), uuid.uuid4().hex
        actor, function = meta.actor, meta.function
        revision = None if meta.revision is None else int(meta.revision)
        results: list[StoredDoc | None] = []
        changes: list[tuple[Any, ...]] = []
        keys: list[tuple[str, str, str]] = []
        deletes: dict[str, list[tuple[str, str]]] = {}
        updates: dict[str, list[tuple[Any, ...]]] = {}
        inserts: dict[str, list[tuple[Any, ...]]] = {}
        for write in writes:
            before = current.get((write.collection, write.id))
            after: StoredDoc | None = None
            if write.op == "delete":
                deletes.setdefault(write.collection, []).append((tenant, write.id))
            else:
                assert write.data is not None
                if before is None:
                    after = StoredDoc(tenant, write.id, 1, now, actor, now, actor, write.data)
                    inserts.setdefault(write.collection, []).append(
                        (tenant, write.id, 1, now, actor, now, actor, write.data)
                    )
                else:
                    after = StoredDoc(
                        tenant,
                        write.id,
                        before.version + 1,
                        before.created_at,
                        before.created_by,
                        now,
                        actor,
                        write.data,
                    )
                    updates.setdefault(write.collection, []).append(
                        (after.version, now, actor, write.data, tenant, write.id)
                    )
            op = "delete" if write.op == "delete" else ("insert" if before is None else "replace")
            after_text = _envelope(after) if after else None
            # Already as SQLite gives them back (auditchain.normalise), so writer and verifier hash the same.
            changes.append(
                (
                    txn,
                    now,
                    write.collection,
                    tenant,
                    write.id,
                    op,
                    _envelope(before) if before else None,
                    after_text,
                    actor,
                    function,
                    revision,
                )
            )
            if write.idempotency_key is not None and after_text is not None:
                keys.append((write.collection, write.idempotency_key, after_text))
            results.append(after)
        # Deletes, then replaces, then inserts (a unique value freed by one write can be taken by another).
        for collection, rows in deletes.items():
            db.executemany(f"DELETE FROM {table(collection)} WHERE tenant = ? AND id = ?", rows)
        for collection, rows in updates.items():
            db.executemany(
                f"UPDATE {table(collection)} SET version = ?, updated_at = ?, updated_by = ?, data = ? "
                "WHERE tenant = ? AND id = ?",
                rows,
            )
        for collection, rows in inserts.items():
            db.executemany(f"INSERT INTO {table(collection)} ({_DOC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        for collection, key, response in keys:
            db.execute(
                "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)", (tenant, collection, key, response, time.time())
            )
        if into is None:
            self._append_changes(db, changes)
        else:
            into.extend(changes)
        return results

    def _append_changes(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Chain and append change rows whose fields (after seq) are already normalised: one hash each."""
        if not rows:
            return
        head = db.execute("SELECT seq, hash FROM changes ORDER BY seq DESC LIMIT 1").fetchone()
        last, prev = (int(head[0]), str(head[1])) if head else (0, auditchain.GENESIS)
        linked = auditchain.link(CHAIN, ((last + n, *row) for n, row in enumerate(rows, 1)), prev)
        marks = ", ".join("?" * (len(auditchain.CHANGE_FIELDS) + 2))
        db.executemany(f"INSERT INTO changes ({_CHANGE_COLUMNS}) VALUES ({marks})", linked)
        db.execute(
            "INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (auditchain.head_setting(CHAIN), f"{linked[-1][0]} {linked[-1][-1]}"),
        )

    def _unique_fields(self, message: str) -> tuple[str, str]:
        """(collection, fields) from SQLite's `UNIQUE constraint failed: docs_x.tenant, docs_x.ix_...`."""
        names = [part.strip() for part in message.split(":", 1)[-1].split(",")]
        tbl = names[0].split(".")[0] if names else ""
        for name, spec_fields in self._indexed.items():
            if table(name) == tbl:
                by_column = {column(f): f for f in spec_fields}
                cols = [n.split(".")[-1] for n in names]
                return name, ", ".join(by_column.get(c, c) for c in cols if c != "tenant")
        return tbl, ", ".join(names)


CHUNK = 500  # ids per `IN (...)` (SQLite's default limit of host parameters is 32,766)


def _rows_by_id(db: sqlite3.Connection, collection: str, tenant: str, ids: Sequence[str]) -> Iterator[StoredDoc]:
    tbl = table(collection)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        marks = ", ".join("?" * len(chunk))
        for row in db.execute(
            f"SELECT {_DOC_COLUMNS} FROM {tbl} WHERE tenant = ? AND id IN ({marks})", (tenant, *chunk)
        ):
            yield StoredDoc(*row)


def _versions(db: sqlite3.Connection, collection: str, tenant: str, ids: Sequence[str]) -> dict[str, int]:
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


def _envelope(doc: StoredDoc) -> str:
    """`_JSON(doc.envelope())` without decoding and encoding the document again: its stored text is already
    the compact JSON this encoder writes, so it is spliced in as it is."""
    q = _quote
    return (
        f'{{"id":{q(doc.id)},"version":{doc.version},"createdAt":{q(doc.created_at)},'
        f'"createdBy":{q(doc.created_by)},"updatedAt":{q(doc.updated_at)},'
        f'"updatedBy":{q(doc.updated_by)},"data":{doc.data}}}'
    )


def _index_fields(spec: dict[str, Any]) -> frozenset[str]:
    return frozenset(f for index in spec.get("indexes", ()) for f in index["fields"])


# -- filters → SQL ----------------------------------------------------------------------------------------


def compile_filter(ast: Filter, indexed: Iterable[str] = ()) -> tuple[str, list[Any]]:
    """`ast` as a SQL condition (0 or 1, never NULL) and its parameters. Indexed fields read their generated
    column; the others `json_extract(data, ?)`."""
    params: list[Any] = []
    sql = _sql(ast, frozenset(indexed), params)
    return sql, params


def _sql(ast: Filter, indexed: frozenset[str], params: list[Any]) -> str:
    if isinstance(ast, Always):
        return "1"
    if isinstance(ast, And):
        return "(" + " AND ".join(_sql(p, indexed, params) for p in ast.parts) + ")"
    if isinstance(ast, Or):
        return "(" + " OR ".join(_sql(p, indexed, params) for p in ast.parts) + ")"
    if isinstance(ast, Not):
        return f"(NOT {_sql(ast.part, indexed, params)})"
    return _leaf(ast, indexed, params)


def _leaf(ast: Compare, indexed: frozenset[str], params: list[Any]) -> str:
    meta = _META_COLUMNS.get(ast.field)
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
    if op in (Op.EQ, Op.NE):
        cond = equal(value)
        return cond if op is Op.EQ else f"(NOT {cond})"
    if op in (Op.IN, Op.NIN):
        assert isinstance(value, tuple)
        parts = [equal(v) for v in value]
        cond = "(" + " OR ".join(parts) + ")" if parts else "0"
        return cond if op is Op.IN else f"(NOT {cond})"
    assert op in ORDERED
    sign = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}[op]
    if isinstance(value, int | float):
        params.extend([*expr_params, *expr_params, value])
        return f"(typeof({expr}) IN ('integer', 'real') AND {expr} {sign} ?)"
    if meta is not None:
        params.append(value)
        return f"(typeof({expr}) = 'text' AND {expr} {sign} ?)"
    params.extend([path, *expr_params, value])
    return f"(json_type(data, ?) = 'text' AND {expr} {sign} ?)"


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


# -- opening and migrating --------------------------------------------------------------------------------


def connect(path: Path) -> DocStore:
    """Open (creating and migrating as needed) the data file at `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataStoreError(f"cannot create the data file {path}: {exc.strerror or exc}") from None
    return DocStore(path)


def _migrate(db: sqlite3.Connection) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(DATA_MIGRATIONS):
        raise DataStoreError(
            f"the data file has schema version {version}, newer than this fnctl knows "
            f"({len(DATA_MIGRATIONS)}); upgrade fnctl"
        )
    for number in range(version, len(DATA_MIGRATIONS)):
        db.execute("BEGIN IMMEDIATE")
        try:
            if int(db.execute("PRAGMA user_version").fetchone()[0]) != number:
                db.execute("ROLLBACK")
                continue
            for statement in _statements(DATA_MIGRATIONS[number]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements
