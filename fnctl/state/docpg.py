"""The document store's side of PostgreSQL: its connection (`PgConn`: the same `execute` as SQLite's, `?`
parameters translated, in the store's own schema) and what other connections committed (`ChangeFeed`, from
LISTEN/NOTIFY). Reached through the state's PostgreSQL opener (`fnctl.state.pgopener`), never imported by a
SQLite path: psycopg's import costs ~0.18 s of CPU.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from fnctl.state import docschema, pg
from fnctl.state.docconn import CHANNEL, SCHEMA, Dialect, DocConn, DocCursor
from fnctl.state.docrecords import DataStoreError
from fnctl.state.docsqlpg import POSTGRES
from fnctl.state.location import StoreError


def open_store(url: str) -> DocConn:
    """A connection to the document store in `url`'s database, its schema created and migrated."""
    try:
        db = PgConn(url)
        docschema.migrate(db)
    except pg.DatabaseError as exc:
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
        self.dialect: Dialect = POSTGRES
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
