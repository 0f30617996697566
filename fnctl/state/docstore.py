"""The document store: ALL of the data plane's SQL, in a SQLite file of its own (WAL) beside the deployment
store (`data_path`), or in the deployment state's PostgreSQL database, in a schema of its own (`fnctl_data`).
One `DocStore` for both: the SQL is portable where it can be, and what differs is the connection's dialect
(`docconn`: `docsql.SQLITE`, `docsqlpg.POSTGRES`).

This module opens the store (`connect`) and reads; the rest is split by role: `docrecords` (the rows and
errors), `docsql` (tables, columns, portable queries, SQLite's dialect), `docsqlpg` (PostgreSQL's),
`docschema` (each collection's table and indexes), `docwrites` (the one write path). One table per collection, keyed (tenant, id); `changes` is the
append-only, hash-chained change log (`fnctl.state.auditchain`, chain "changes"); `idempotency` remembers
inserts by key.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from fnctl.state import auditchain, docschema, docwrites, outbox
from fnctl.state.backends import postgres
from fnctl.state.docconn import SCHEMA, DocConn, Feed, SqliteConn
from fnctl.state.docrecords import (
    ChangeRow,
    CollectionRow,
    DataStoreError,
    GroupItem,
    Query,
    StoredDoc,
    SyncResult,
)
from fnctl.state.docsql import CHAIN, CHANGE_COLUMNS, DOC_COLUMNS, SQLITE, find_rows, index_fields, rows_by_id, table
from fnctl.state.location import StateLocation, StoreError
from fnctl.state.migrations import use_wal

Location = Path | str  # a SQLite file, or a postgresql:// URL

# Pages a connection's WAL may hold before the committing connection checkpoints it itself, once checkpoints run
# apart (`DocStore.checkpoint_apart`): a safety net for a checkpointer that fell behind, not the usual way.
CHECKPOINT_SAFETY = 10_000


P = ParamSpec("P")
R = TypeVar("R")


def _writes(method: Callable[Concatenate[DocStore, P], R]) -> Callable[Concatenate[DocStore, P], R]:
    """A method that writes to the store: its checkpointer is told afterwards, the write failed or not (a
    failed one may have left WAL pages too), once checkpoints run apart (`DocStore.checkpoint_apart`)."""

    def write(store: DocStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(store, *args, **kwargs)
        finally:
            if store._wrote is not None:
                store._wrote()

    return write


def data_path(state_file: Path) -> Path:
    """The data file beside the deployment store: `<dir>/<stem>.data.db`."""
    return state_file.with_name(f"{state_file.stem}.data.db")


def open_at(state: StateLocation) -> DocStore:
    """The document store of the deployment state at `state`: on SQLite the data file beside state.db, on
    PostgreSQL the same database (schema `fnctl_data`). Every command and the gateway open it here."""
    return connect(state.url if state.url is not None else data_path(state.path))


def exists_at(state: StateLocation) -> bool:
    """Whether the state's document store was ever created, without creating it (reading commands say "no
    data store" instead of making an empty one)."""
    if state.url is None:
        return data_path(state.path).exists()
    return postgres(state.url).documents_exist(state.url)


def where(state: StateLocation) -> str:
    """The state's document store, for messages."""
    return f"{state} (schema {SCHEMA})" if state.url is not None else str(data_path(state.path))


class DocStore:
    def __init__(self, location: Location) -> None:
        """`location`: the data file, or the PostgreSQL database (its URL) of the deployment state."""
        self.url = location if isinstance(location, str) else None
        self.path = Path(location) if isinstance(location, Path) else Path()
        self._local = threading.local()
        self._all: list[DocConn] = []
        self._lock = threading.Lock()
        self._indexed: dict[str, frozenset[str]] = {}  # collection → fields with a generated column
        self._apart = False  # checkpoints run apart from the writes (`checkpoint_apart`)
        self._wrote: Callable[[], None] | None = None  # told of every write transaction once they run apart
        self._feed: Feed | None = None  # PostgreSQL: other connections' commits (data_version)
        self._db()  # open (and migrate) now, so errors surface here
        self._load_indexed()

    # -- connections ------------------------------------------------------------------------------------

    def _db(self) -> DocConn:
        db: DocConn | None = getattr(self._local, "db", None)
        if db is None:
            db = self._open_pg(self.url) if self.url is not None else self._open_sqlite()
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def checkpoint_apart(self, wrote: Callable[[], None] | None = None) -> bool:
        """Take checkpoints (copying the WAL into the database file, and their fsyncs) off the write path: the
        connections opened from now on, and the calling thread's, checkpoint only past CHECKPOINT_SAFETY pages;
        the caller runs `checkpoint()` from a thread of its own, when `wrote` (called after each of this
        store's write transactions, on the writing thread) says there is something to copy. SQLite's automatic
        checkpoint (every 1,000 pages, by the connection that commits) stalled the committing thread, and
        every write waiting on it, for milliseconds whenever the disk was busy. False on PostgreSQL: nothing
        to checkpoint."""
        if self.url is not None:
            return False  # PostgreSQL has no WAL file of ours to checkpoint
        self._apart, self._wrote = True, wrote
        self._db().execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_SAFETY}")
        return True

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file without waiting for readers or the writer (PASSIVE)."""
        if self.url is not None:
            return
        try:
            self._db().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot checkpoint the data file: {exc}") from None

    def _open_sqlite(self) -> DocConn:
        try:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False, factory=SqliteConn
            )
            db.dialect = SQLITE
            use_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")
            if self._apart:
                db.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_SAFETY}")
            docschema.migrate(db)
        except sqlite3.Error as exc:
            raise DataStoreError(f"cannot open the data file {self.path}: {exc}") from None
        return db

    def _open_pg(self, url: str) -> DocConn:
        return postgres(url).open_documents(url)

    @property
    def backend(self) -> str:
        return "postgresql" if self.url is not None else "sqlite"

    @property
    def composites_as_null(self) -> bool:
        """Whether an object or array in an ordered field sorts as NULL (PostgreSQL's index columns hold only
        numbers and strings) rather than as its JSON text (SQLite's json_extract)."""
        return self.url is not None

    def close(self) -> None:
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
            if self._feed is not None:
                self._feed.close()
                self._feed = None
        self._local = threading.local()

    # -- collections ------------------------------------------------------------------------------------

    def collections(self) -> dict[str, CollectionRow]:
        rows = self._db().execute("SELECT name, spec, version FROM collections").fetchall()
        result = {name: CollectionRow(name, json.loads(spec), int(version)) for name, spec, version in rows}
        self._indexed = {n: index_fields(c.spec) for n, c in result.items()}
        return result

    def _load_indexed(self) -> None:
        self.collections()

    def count(self, collection: str) -> int:
        return int(self._db().execute(f"SELECT COUNT(*) FROM {table(collection)}").fetchone()[0])

    @_writes
    def sync_collections(self, specs: dict[str, dict[str, Any]], prune: bool, force: bool) -> SyncResult:
        """Make the collections' tables and indexes those of `specs` (`docschema.sync_collections`)."""
        result = docschema.sync_collections(self._db(), specs, prune, force)
        self.collections()
        return result

    # -- reads ------------------------------------------------------------------------------------------

    def get(self, collection: str, tenant: str, id: str) -> StoredDoc | None:
        try:
            row = (
                self._db()
                .execute(f"SELECT {DOC_COLUMNS} FROM {table(collection)} WHERE tenant = ? AND id = ?", (tenant, id))
                .fetchone()
            )
        except self._db().dialect.Error as exc:
            raise DataStoreError(f"cannot read {collection}: {exc}") from None
        return None if row is None else StoredDoc(*row)

    def get_many(self, collection: str, tenant: str, ids: Sequence[str]) -> dict[str, StoredDoc]:
        """The documents of `ids` that exist, by id, in one query per CHUNK ids."""
        try:
            return {row.id: row for row in rows_by_id(self._db(), collection, tenant, ids)}
        except self._db().dialect.Error as exc:
            raise DataStoreError(f"cannot read {collection}: {exc}") from None

    def find(self, query: Query) -> list[StoredDoc]:
        try:
            return find_rows(self._db(), self._indexed.get(query.collection, frozenset()), query)
        except self._db().dialect.Error as exc:
            raise DataStoreError(f"cannot read {query.collection}: {exc}") from None

    def scan(self, collection: str, tenant: str | None = None, batch: int = 1000) -> Iterator[StoredDoc]:
        """Every document of a collection (one tenant's, or all), by (tenant, id), in batches."""
        last: tuple[str, str] = ("", "")
        first = True
        tbl = table(collection)
        while True:
            cond, params = ("(tenant, id) > (?, ?)", [*last]) if not first else ("TRUE", [])
            if tenant is not None:
                cond += " AND tenant = ?"
                params.append(tenant)
            rows = (
                self._db()
                .execute(f"SELECT {DOC_COLUMNS} FROM {tbl} WHERE {cond} ORDER BY tenant, id LIMIT ?", (*params, batch))
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
        yield from self._db().execute(f"SELECT {CHANGE_COLUMNS} FROM changes ORDER BY seq")

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

    # -- the write path (docwrites) ----------------------------------------------------------------------

    @_writes
    def commit(
        self, item: GroupItem, outbox: docwrites.Outbox = None, committed: list[ChangeRow] | None = None
    ) -> list[StoredDoc | None]:
        """One transaction's reads checked and writes applied in one short write transaction
        (`docwrites.commit`): the new rows, None for deletes; with the outbox rows of `outbox`'s onCommit
        triggers, and the changes logged appended to `committed`."""
        return docwrites.commit(self._db(), self._indexed, item, outbox, committed)

    @_writes
    def commit_group(
        self, items: Sequence[GroupItem], outbox: docwrites.Outbox = None, committed: list[ChangeRow] | None = None
    ) -> list[list[StoredDoc | None] | Exception]:
        """Independent transactions in one write transaction, each failing alone (`docwrites.commit_group`)."""
        return docwrites.commit_group(self._db(), self._indexed, items, outbox, committed)

    @_writes
    def commit_inserts(
        self,
        inserts: Sequence[docwrites.PlainInsert],
        outbox: docwrites.Outbox = None,
        committed: list[ChangeRow] | None = None,
    ) -> list[StoredDoc] | None:
        """A group of fresh single inserts in one write transaction (`docwrites.commit_inserts`); None when a
        unique index refused one (nothing written)."""
        return docwrites.commit_inserts(self._db(), inserts, outbox, committed)

    # -- what other processes wrote, and the outbox (fnctl.state.outbox) -----------------------------------

    def data_version(self) -> int:
        """Changes when another connection (another thread's or process's) committed to the store since. On
        PostgreSQL from the commits' notifications (`ChangeFeed`, listening from the first call on): no round
        trip when nothing changed, and another gateway's writes move it too."""
        if self.url is None:
            db = self._db()
            return db.dialect.data_version(db)
        with self._lock:
            if self._feed is None:
                try:
                    self._feed = postgres(self.url).change_feed(self.url)
                except StoreError as exc:
                    raise DataStoreError(str(exc)) from None
        return self._feed.version()

    def changes_after(self, seq: int, limit: int) -> list[ChangeRow]:
        """The change log after `seq`, every tenant, by seq."""
        rows = self._db().execute(
            "SELECT seq, txn, at, collection, tenant, id, op, before, after, actor, function, revision FROM changes "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [ChangeRow(*r) for r in rows]

    def last_seq(self) -> int:
        row = self._db().execute("SELECT MAX(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    def outbox_due(self, now: float, limit: int, paused: Iterable[str] = ()) -> list[outbox.OutboxEvent]:
        return outbox.due(self._db(), now, limit, paused)

    @_writes
    def outbox_settle(
        self, delivered: Sequence[tuple[str, int]], failed: Sequence[tuple[str, int, int, float | None, str]]
    ) -> None:
        outbox.settle(self._db(), delivered, failed)

    def outbox_list(
        self, state: str | None, trigger: str | None, limit: int, after: int = 0
    ) -> list[outbox.OutboxEvent]:
        return outbox.listing(self._db(), state, trigger, limit, after)

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        return outbox.counts(self._db())

    @_writes
    def outbox_replay(self, trigger: str | None, seqs: Sequence[int], state: str = outbox.DEAD) -> int:
        return outbox.replay(self._db(), trigger, seqs, state)

    @_writes
    def outbox_purge(self, state: str | None, trigger: str | None, seqs: Sequence[int] = ()) -> int:
        return outbox.purge(self._db(), state, trigger, seqs)

    @_writes
    def outbox_prune(self, delivered_before: float, dead_before: float) -> int:
        return outbox.prune(self._db(), delivered_before, dead_before)


def connect(location: Location) -> DocStore:
    """Open (creating and migrating as needed) the data file at `location`, or the document store in the
    PostgreSQL database whose URL it is."""
    if isinstance(location, str):
        return DocStore(location)
    path = location
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataStoreError(f"cannot create the data file {path}: {exc.strerror or exc}") from None
    return DocStore(path)
