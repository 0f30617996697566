"""The document store's connections to its two backends, and what differs between them.

The SQL above (`docstore`, `docwrites`, `docschema`, `outbox`) is written once, with `?` parameters, against
`DocConn`: a SQLite connection (`SqliteConn`, a `sqlite3.Connection` that names its dialect, so SQLite pays
nothing for the indirection) or a PostgreSQL one (`PgConn`: `?` → `%s`, in the store's own schema). What
cannot be written once — filters and ordering, generated columns and indexes, migrations, how a write
transaction serialises, what a constraint error says — is the connection's `dialect`
(`docsql.SQLITE`, `docsqlpg.POSTGRES`).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from fnctl.state import pg
from fnctl.state.docrecords import Query
from fnctl.state.location import StoreError

SCHEMA = "fnctl_data"  # the document store's PostgreSQL schema, beside the deployment state's tables
Head = tuple[int, str]  # the change log's last seq and its hash
CHANNEL = "fnctl_changes"  # PostgreSQL: every write transaction NOTIFYs it on commit (payload: its last seq)


class DocCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DocConn(Protocol):
    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> DocCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def close(self) -> None: ...

    def pipeline(self) -> contextlib.AbstractContextManager[Any]:
        """Statements inside are sent without waiting for their answers until a result is read or the block
        ends (PostgreSQL's pipeline mode: one round trip for a transaction's writes and its COMMIT); an error
        may then surface at the end. SQLite: nothing (it has no round trips)."""


class Dialect(Protocol):
    """What differs between the backends (`docsql.SQLITE`, `docsqlpg.POSTGRES`)."""

    @property
    def name(self) -> str: ...

    @property
    def Error(self) -> type[Exception]:  # noqa: N802 (a class, as the drivers name it)
        """Every error of the backend's driver."""

    @property
    def IntegrityError(self) -> type[Exception]:  # noqa: N802
        """A constraint refused a write."""

    def begin_write(self, db: DocConn) -> Head | None:
        """Open a write transaction that serialises with every other writer of the store (the change log's
        sequence and hash chain are appended under it, so its order is the commit order). The change log's
        head when it was read in the same round trip (PostgreSQL), None when not (SQLite: no round trips)."""

    def find_sql(self, query: Query, indexed: frozenset[str], columns: str) -> tuple[str, list[Any]]:
        """The SELECT of `columns` for `query`: filter, keyset cursor, order and limit."""

    def migrate(self, db: DocConn) -> None: ...

    def create_or_alter(self, db: DocConn, name: str, spec: dict[str, Any]) -> None:
        """A collection's table, its indexed fields' generated columns and its indexes, as `spec` declares."""

    def unique_fields(self, indexed: dict[str, frozenset[str]], exc: Exception) -> tuple[str, str] | None:
        """(collection, fields) of the unique index that refused a write; None: another constraint."""

    def data_version(self, db: DocConn) -> int:
        """A number that moves when another connection committed a change since it was last read."""

    def announce(self, db: DocConn, last_seq: int) -> None:
        """In a write transaction that appended changes up to `last_seq`: tell the store's other readers on
        commit (PostgreSQL: NOTIFY, see ChangeFeed; SQLite: nothing, its readers see the file move)."""


class SqliteConn(sqlite3.Connection):
    """A SQLite connection of the document store (`sqlite3.connect(..., factory=SqliteConn)`)."""

    dialect: Dialect

    def pipeline(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


class PgConn:
    """A PostgreSQL connection of the document store: the same `execute` as SQLite's, `?` parameters
    translated, in the `fnctl_data` schema (the deployment state's tables keep the default schema)."""

    def __init__(self, url: str, dialect: Dialect) -> None:
        self.dialect = dialect
        self._conn = pg.connect(url)
        try:
            self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        except pg.UniqueViolation:  # two processes created it at once: it exists
            pass
        self._conn.execute(f"SET search_path TO {SCHEMA}, public")

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> DocCursor:
        if parameters:
            return self._conn.execute(_pg_sql(sql), parameters)
        return self._conn.execute(sql)  # without parameters psycopg reads no `%s`

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), parameters)

    def close(self) -> None:
        self._conn.close()

    def pipeline(self) -> contextlib.AbstractContextManager[Any]:
        return self._conn.pipeline()


class ChangeFeed:
    """What other connections (other processes, other hosts) committed to a PostgreSQL document store, learnt
    from the NOTIFY that each write transaction sends on commit, on a LISTEN connection of its own:
    `version()` moves when one arrived, read from the socket without a round trip (what SQLite's `PRAGMA
    data_version` is for a file). A lost connection counts as a change — what it missed is unknown, so readers
    go back to the change log — and it is opened again on the next look."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._version = 0
        self._conn: pg.Connection[tuple[object, ...]] | None = None
        self._listen()

    def _listen(self) -> None:
        conn = pg.connect(self._url)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except pg.DatabaseError:
            conn.close()
            raise
        self._conn = conn

    def version(self) -> int:
        with self._lock:
            try:
                if self._conn is None:
                    self._listen()
                    self._version += 1
                elif pg.drain_notifies(self._conn):
                    self._version += 1
            except (pg.DatabaseError, StoreError):
                self._close()
                self._version += 1
            return self._version

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pg.DatabaseError:
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """SQLite's `?` parameters as psycopg's `%s` (a literal `%` doubled). The store's SQL has no `?` inside a
    string literal: every value is a parameter."""
    return sql.replace("%", "%%").replace("?", "%s")
