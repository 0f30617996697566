"""The document store's side of PostgreSQL: its connection (`PgConn`: the same `execute` as SQLite's, `?`
parameters translated, in the store's own schema, writes held and sent with the statement after them) and
what other connections committed (`ChangeFeed`, from LISTEN/NOTIFY). Imported only for a store on PostgreSQL:
psycopg's import costs every SQLite command ~0.18 s of CPU otherwise (`fnctl.state.pgbackend` does the same for
the deployment state).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fnctl.state import docschema, pg
from fnctl.state.docconn import CHANNEL, SCHEMA, DocConn, DocCursor
from fnctl.state.docrecords import DataStoreError
from fnctl.state.docsqlpg import POSTGRES
from fnctl.state.location import StoreError


def open_store(url: str) -> DocConn:
    """A connection to the document store in `url`'s database, its schema created and migrated."""
    try:
        db = PgConn(url)
        docschema.migrate(db)
    except (pg.DatabaseError, StoreError) as exc:
        raise DataStoreError(f"cannot open the document store in {pg.target(url)}: {exc}") from None
    return db


def schema_exists(url: str) -> bool:
    """Whether the store's schema was ever created in `url`'s database (asked without creating it)."""
    try:
        db = pg.connect(url)
    except StoreError as exc:
        raise DataStoreError(str(exc)) from None
    try:
        row = db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (SCHEMA,)).fetchone()
    except pg.DatabaseError as exc:
        raise DataStoreError(f"cannot read the document store in {pg.target(url)}: {exc}") from None
    finally:
        db.close()
    return row is not None


class PgConn:
    """A PostgreSQL connection of the document store: the same `execute` as SQLite's, `?` parameters
    translated, in the `fnctl_data` schema (the deployment state's tables keep the default schema)."""

    def __init__(self, url: str) -> None:
        self.dialect = POSTGRES
        self._held: list[tuple[str, Sequence[Any]]] | None = None  # inside `held`: writes not sent yet
        self._conn = pg.connect(url)
        try:
            self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        except pg.UniqueViolation:  # two processes created it at once: it exists
            pass
        self._conn.execute(f"SET search_path TO {SCHEMA}, public")

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> DocCursor:
        if self._held:
            return self._send([*self._held, (sql, parameters)])
        if parameters:
            return self._conn.execute(_pg_sql(sql), parameters)
        return self._conn.execute(sql)  # without parameters psycopg reads no `%s`

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        if self._held:  # what was held goes first: statements reach the server in the order they were made
            self._send(self._held)
        with self._conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), parameters)

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._held = []
        try:
            yield
            if self._held:
                self._send(self._held)
        finally:
            self._held = None

    def hold(self, sql: str, parameters: Sequence[Any] = (), /) -> None:
        if self._held is None:
            self.execute(sql, parameters)
        else:
            self._held.append((sql, parameters))

    def hold_many(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        if self._held is None:
            self.executemany(sql, parameters)
        else:
            self._held.extend((sql, row) for row in parameters)

    def _send(self, statements: list[tuple[str, Sequence[Any]]]) -> DocCursor:
        """Statements as one simple query (parameters bound on the client), positioned on the last one's
        result. The held ones are gone whether it succeeds or not (a failure aborts the transaction)."""
        if self._held is not None:
            self._held = []
        cursor = pg.client_cursor(self._conn)
        cursor.execute("; ".join(_pg_sql(sql) for sql, _ in statements), [p for _, ps in statements for p in ps])
        while cursor.nextset():
            pass
        return cursor


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
        self._conn: pg.Connection[tuple[object, ...]] | None = pg.listen(url, CHANNEL)

    def version(self) -> int:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = pg.listen(self._url, CHANNEL)
                    self._version += 1
                elif pg.drain_notifies(self._conn):
                    self._version += 1
            except (pg.DatabaseError, StoreError):
                self._close()
                self._version += 1
            return self._version

    def _close(self) -> None:
        pg.close_quietly(self._conn)
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """SQLite's `?` parameters as psycopg's `%s` (a literal `%` doubled). The store's SQL has no `?` inside a
    string literal: every value is a parameter."""
    return sql.replace("%", "%%").replace("?", "%s")
